"""Two builds on one machine share the apt root under the build cache: they take turns."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from appliance.fetchers.apt import _exclusive


def test_a_second_build_waits_for_the_first_to_leave_the_apt_root(tmp_path: Path) -> None:
    lock = tmp_path / "cache" / "apt-amd64.lock"
    order: list[str] = []
    first_inside = threading.Event()

    def first() -> None:
        with _exclusive(lock):
            order.append("first in")
            first_inside.set()
            time.sleep(0.3)
            order.append("first out")

    def second() -> None:
        first_inside.wait()
        with _exclusive(lock):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["first in", "first out", "second in"]


def test_the_lock_is_released_when_resolution_fails(tmp_path: Path) -> None:
    lock = tmp_path / "apt-amd64.lock"
    try:
        with _exclusive(lock):
            raise RuntimeError("apt failed")
    except RuntimeError:
        pass
    with lock.open("a") as handle:  # raises BlockingIOError if the lock were still held
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
