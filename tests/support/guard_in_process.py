"""A Guard the test drives itself (collect, check_baseline) without the supervisor's run: the
supervisor gives it its events and outlets, and the signal mask a real run sets is lifted
again, so the test process still takes SIGINT and SIGTERM."""

from __future__ import annotations

import signal
from typing import IO

from patchguard.guard.config import GuardConfig
from patchguard.guard.daemon import Guard
from patchguard.guard.supervisor import SIGNALS, Supervisor


def in_process_guard(config: GuardConfig, out: IO[str]) -> Guard:
    sup = Supervisor(config, None, out)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return Guard(config, None, sup.outlets, sup)
