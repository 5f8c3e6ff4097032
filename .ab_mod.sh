cp -a /results/before /tmp/b
for i in 1 2; do
echo "== before"; PYTHONPATH=/tmp/b python3 /src/bench/scan_breakdown.py --rounds 3 | grep -E "modules|imports|kernel_text|load"
echo "== after"; python3 /src/bench/scan_breakdown.py --rounds 3 | grep -E "modules|imports|kernel_text|load"
done
