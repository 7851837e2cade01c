"""Client threads for the integration tests: loops that drive a live app for a while.

An assertion inside a plain thread is lost (the thread dies, the test goes on); :func:`run_clients` re-raises the
first error a loop raised, in the test's own thread, once every loop has stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

Loop = Callable[[threading.Event], None]  # runs until the event is set


def run_clients(loops: Iterable[Loop], seconds: float, until: Callable[[], bool] | None = None,
                join_s: float = 15.0) -> None:
    """Run each loop on its own daemon thread for ``seconds``, or until ``until()`` holds; then stop and join them.

    A loop that raises stops them all, and its error is raised here.
    """
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(loop: Loop) -> None:
        try:
            loop(stop)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(loop,), daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
        if until is not None and until():
            break
        time.sleep(min(0.2, remaining))
    stop.set()
    for thread in threads:
        thread.join(timeout=join_s)
    if errors:
        raise errors[0]
