"""logfile.pdf rendered by a separate Python process, started when a run starts.

matplotlib is most of a run's fixed cost: importing it (with the PDF backend and fontTools)
takes about as much CPU time as refining a few thousand particles, and in a thread of the run's
own process that import holds the GIL that the run's reading, set-up and batch loop need. A
child process imports it on another core while the run works; after the fit the refinement is
sent to it (pickled, through its stdin) and it renders the PDF while the run writes its other
outputs. The child writes only the path it is given (inside the run's staging directory).

Any failure of the child (it could not start, died, timed out, or reported an error) makes the
run render the PDF itself, as it would without the child: the child can make a run faster, never
break it. A child that gets no request (the run failed or was aborted) exits when its stdin
closes, i.e. at the latest when the run's process ends.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

from .console import exit_now

#: Environment variable: set to 0 to render in the run's own process.
ENV = "CSREFINE_REPORT_PROCESS"
#: Longest wait for the child's PDF, s (then the run renders it itself).
WAIT_S = 300.0
OK = b"ok"


class ReportProcess:
    """A child process that renders one logfile.pdf (see the module docstring)."""

    def __init__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.sent = False

    def render(self, path, refinement, extra_lines=()) -> bool:
        """Send the request; False if the child cannot take it (then render it yourself)."""
        try:
            self.proc.stdin.write(pickle.dumps((str(path), refinement, list(extra_lines)),
                                               protocol=pickle.HIGHEST_PROTOCOL))
            self.proc.stdin.close()
            self.proc.stdin = None  # communicate() must not flush it again
            self.sent = True
            return True
        except (OSError, pickle.PicklingError, ValueError):
            self.close()
            return False

    def wait(self, timeout_s: float = WAIT_S) -> bool:
        """True when the child wrote the PDF."""
        if not self.sent:
            return False
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            return False
        return self.proc.returncode == 0 and out.strip() == OK

    def finish(self, path) -> bool:
        """Wait for the PDF requested by :meth:`render` and stop the child; True if ``path``
        was written, else False with nothing left at ``path``."""
        try:
            if self.wait() and Path(path).is_file():
                return True
        finally:
            self.close()
        Path(path).unlink(missing_ok=True)
        return False

    def close(self) -> None:
        """Stop the child (if it still runs)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


_PRESTARTED: list[ReportProcess] = []


def start() -> ReportProcess | None:
    """A child for one PDF (the one :func:`prestart` started, if any), or None if
    ``$CSREFINE_REPORT_PROCESS`` is 0 or it cannot be started."""
    if os.environ.get(ENV, "1").strip() == "0":
        while _PRESTARTED:
            _PRESTARTED.pop().close()
        return None
    if _PRESTARTED:
        return _PRESTARTED.pop()
    try:
        return ReportProcess()
    except OSError:
        return None


def prestart() -> None:
    """Start the child now, for the run this process is about to make (command-line entry
    points call this first thing, so that its imports overlap with theirs). A child that no run
    takes exits when this process ends."""
    if not _PRESTARTED:
        child = start()
        if child is not None:
            _PRESTARTED.append(child)


def _serve() -> int:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.backends import backend_pdf

    from .report import write_pdf

    # before the request arrives: the imports above and a first (throw-away) PDF page, which
    # loads the fonts
    fig = plt.figure(figsize=(2, 2))
    fig.text(0.5, 0.5, "Å ± σ °", ha="center")
    with backend_pdf.PdfPages(io.BytesIO()) as pdf:
        pdf.savefig(fig)
    plt.close(fig)

    data = sys.stdin.buffer.read()
    if not data:  # the run ended without a request
        return 0
    path, refinement, extra_lines = pickle.loads(data)
    write_pdf(path, refinement, extra_lines=extra_lines)
    sys.stdout.buffer.write(OK)
    return 0


if __name__ == "__main__":
    # The PDF is closed and renamed into place; the run waits for this process to end, so it
    # ends without the interpreter's teardown (about 0.17 s with matplotlib loaded).
    exit_now(_serve())
