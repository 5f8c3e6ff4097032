// tlogcheck: the Go checksum database's own code (golang.org/x/mod/sumdb/note and
// sumdb/tlog) checking a patchguard log, and making a log for patchguard to check.
//
//	tlogcheck verify DIR VKEY [PROOF_FILE...]  a published patchguard log (DIR may be an
//	                                           http:// URL: the log as a server serves it)
//	tlogcheck make DIR OLD NEW                 DIR/old and DIR/new: one Go-made log at two sizes
//
// Paths are C2SP tlog-tiles (tile/L/N, tile/entries/N); Go's own sumdb tiles live at
// tile/8/L/N instead, but the hashes and tile contents are the same, which is what is compared.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "tlogcheck: "+format+"\n", args...)
	os.Exit(1)
}

func must(err error, what string) {
	if err != nil {
		die("%s: %v", what, err)
	}
}

// index encodes a tile index as C2SP tlog-tiles does: 1234067 is x001/x234/067.
func index(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n /= 1000; n > 0; n /= 1000 {
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}

func tilePath(level string, n int64, w int64) string {
	p := "tile/" + level + "/" + index(n)
	if w < 256 {
		p += fmt.Sprintf(".p/%d", w)
	}
	return p
}

func width(count, n int64) int64 {
	if w := count - n*256; w < 256 {
		return w
	}
	return 256
}

// memory holds tlog's stored hashes, in tlog's own order.
type memory []tlog.Hash

func (m memory) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(m)) {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = m[x]
	}
	return out, nil
}

func build(entries [][]byte) memory {
	var m memory
	for i, e := range entries {
		hashes, err := tlog.StoredHashes(int64(i), e, m)
		must(err, "StoredHashes")
		m = append(m, hashes...)
	}
	return m
}

// readFile reads name (a tlog-tiles path) under a directory or, for an http:// base, by GET.
func readFile(base, name string) ([]byte, error) {
	if !strings.HasPrefix(base, "http://") {
		return os.ReadFile(filepath.Join(base, name))
	}
	resp, err := http.Get(base + "/" + name)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", name, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<24))
}

func readEntries(dir string, size int64) [][]byte {
	var entries [][]byte
	for n := int64(0); n*256 < size; n++ {
		data, err := readFile(dir, tilePath("entries", n, width(size, n)))
		must(err, "entry bundle")
		for len(data) > 0 {
			if len(data) < 2 || len(data) < 2+int(binary.BigEndian.Uint16(data)) {
				die("entry bundle %d is cut short", n)
			}
			l := int(binary.BigEndian.Uint16(data))
			entries = append(entries, data[2:2+l])
			data = data[2+l:]
		}
	}
	if int64(len(entries)) != size {
		die("%d entries published, the checkpoint says %d", len(entries), size)
	}
	return entries
}

func openCheckpoint(dir, vkey string) (string, int64, tlog.Hash) {
	msg, err := readFile(dir, "checkpoint")
	must(err, "checkpoint")
	v, err := note.NewVerifier(vkey)
	must(err, "vkey")
	n, err := note.Open(msg, note.VerifierList(v))
	must(err, "checkpoint signature")
	lines := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	must(err, "checkpoint size")
	root, err := tlog.ParseHash(lines[2])
	must(err, "checkpoint root")
	return lines[0], size, root
}

// parseProof reads patchguard's proof text: "index N" or "old N", base64 hashes, a blank line.
func parseProof(path string) (string, int64, []tlog.Hash) {
	f, err := os.Open(path)
	must(err, "proof")
	defer f.Close()
	scan := bufio.NewScanner(f)
	scan.Scan()
	kind, number, _ := strings.Cut(scan.Text(), " ")
	x, err := strconv.ParseInt(number, 10, 64)
	must(err, "proof's first line")
	var hashes []tlog.Hash
	for scan.Scan() && scan.Text() != "" {
		h, err := tlog.ParseHash(scan.Text())
		must(err, "proof hash")
		hashes = append(hashes, h)
	}
	return kind, x, hashes
}

func same(a, b []tlog.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func verify(dir, vkey string, proofs []string) {
	origin, size, root := openCheckpoint(dir, vkey)
	entries := readEntries(dir, size)
	m := build(entries)
	th, err := tlog.TreeHash(size, m)
	must(err, "TreeHash")
	if th != root {
		die("the entries give root %v, the checkpoint says %v", th, root)
	}
	tiles := 0
	for l := 0; size>>(8*l) > 0; l++ {
		count := size >> (8 * l)
		for n := int64(0); n*256 < count; n++ {
			t := tlog.Tile{H: 8, L: l, N: n, W: int(width(count, n))}
			want, err := tlog.ReadTileData(t, m)
			must(err, "ReadTileData")
			got, err := readFile(dir, tilePath(strconv.Itoa(l), n, int64(t.W)))
			must(err, "tile")
			if !bytes.Equal(got, want) {
				die("tile %d/%d differs from sumdb/tlog's", l, n)
			}
			tiles++
		}
	}
	for _, path := range proofs {
		kind, x, hashes := parseProof(path)
		switch kind {
		case "index":
			must(tlog.CheckRecord(hashes, size, root, x, tlog.RecordHash(entries[x])), "CheckRecord")
			own, err := tlog.ProveRecord(size, x, m)
			must(err, "ProveRecord")
			if !same(own, hashes) {
				die("inclusion proof for %d differs from sumdb/tlog's", x)
			}
		case "old":
			old, err := tlog.TreeHash(x, m)
			must(err, "TreeHash old")
			must(tlog.CheckTree(hashes, size, root, x, old), "CheckTree")
			own, err := tlog.ProveTree(size, x, m)
			must(err, "ProveTree")
			if !same(own, hashes) {
				die("consistency proof from %d differs from sumdb/tlog's", x)
			}
		default:
			die("%s: not a proof", path)
		}
	}
	fmt.Printf("ok %s %d %s tiles %d proofs %d\n", origin, size, root, tiles, len(proofs))
}

func write(path string, data []byte) {
	must(os.MkdirAll(filepath.Dir(path), 0o755), "mkdir")
	must(os.WriteFile(path, data, 0o644), "write")
}

func publish(dir string, entries [][]byte, m memory, signer note.Signer) tlog.Hash {
	size := int64(len(entries))
	for n := int64(0); n*256 < size; n++ {
		var bundle []byte
		for _, e := range entries[n*256 : n*256+width(size, n)] {
			bundle = binary.BigEndian.AppendUint16(bundle, uint16(len(e)))
			bundle = append(bundle, e...)
		}
		write(filepath.Join(dir, tilePath("entries", n, width(size, n))), bundle)
	}
	for l := 0; size>>(8*l) > 0; l++ {
		count := size >> (8 * l)
		for n := int64(0); n*256 < count; n++ {
			t := tlog.Tile{H: 8, L: l, N: n, W: int(width(count, n))}
			data, err := tlog.ReadTileData(t, m)
			must(err, "ReadTileData")
			write(filepath.Join(dir, tilePath(strconv.Itoa(l), n, int64(t.W))), data)
		}
	}
	root, err := tlog.TreeHash(size, m)
	must(err, "TreeHash")
	msg, err := note.Sign(&note.Note{Text: string(tlog.FormatTree(tlog.Tree{N: size, Hash: root}))}, signer)
	must(err, "Sign")
	write(filepath.Join(dir, "checkpoint"), msg)
	return root
}

func makeLog(dir string, old, size int64) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "go.example/tlog")
	must(err, "GenerateKey")
	signer, err := note.NewSigner(skey)
	must(err, "NewSigner")
	var entries [][]byte
	for i := int64(0); i < size; i++ {
		entries = append(entries, []byte(fmt.Sprintf("go record %d\n", i)))
	}
	publish(filepath.Join(dir, "old"), entries[:old], build(entries[:old]), signer)
	m := build(entries)
	publish(filepath.Join(dir, "new"), entries, m, signer)
	var b strings.Builder
	proof, err := tlog.ProveTree(size, old, m)
	must(err, "ProveTree")
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range proof {
		fmt.Fprintf(&b, "%s\n", base64.StdEncoding.EncodeToString(h[:]))
	}
	write(filepath.Join(dir, "consistency"), []byte(b.String()))
	record, err := tlog.ProveRecord(size, old/2, m)
	must(err, "ProveRecord")
	b.Reset()
	fmt.Fprintf(&b, "index %d\n", old/2)
	for _, h := range record {
		fmt.Fprintf(&b, "%s\n", base64.StdEncoding.EncodeToString(h[:]))
	}
	write(filepath.Join(dir, "inclusion"), []byte(b.String()))
	fmt.Println(vkey)
}

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "verify" {
		verify(os.Args[2], os.Args[3], os.Args[4:])
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "make" {
		old, err := strconv.ParseInt(os.Args[3], 10, 64)
		must(err, "OLD")
		size, err := strconv.ParseInt(os.Args[4], 10, 64)
		must(err, "NEW")
		makeLog(os.Args[2], old, size)
		return
	}
	die("usage: tlogcheck verify DIR VKEY [PROOF...] | tlogcheck make DIR OLD NEW")
}
