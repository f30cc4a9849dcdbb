"""libs.progress: plain lines at most every `every_s` seconds, a last line at close, honest rates and ETA."""
import io

from libs.progress import Progress, format_duration


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_are_rate_limited_and_closed_once():
    clock, out = _Clock(), io.StringIO()
    p = Progress(100, "embed", unit="docs", every_s=5, stream=out, clock=clock)
    for _ in range(10):
        clock.t += 1
        p.update(5)
    p.close()
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3                     # at t=5 and t=10, then the closing line
    assert lines[0].startswith("[embed] 25/100 docs (25%), 5.0 docs/s")
    assert "ETA 15s" in lines[0]
    assert lines[-1].startswith("[embed] 50/100 docs (50%)")
    assert "\r" not in out.getvalue()


def test_resumed_loop_counts_rate_from_where_it_started():
    clock, out = _Clock(), io.StringIO()
    p = Progress(200, "train", unit="steps", every_s=0, stream=out, clock=clock, initial=100)
    clock.t = 10
    p.update(50)
    assert "150/200 steps (75%), 5.0 steps/s" in out.getvalue()
    assert "ETA 10s" in out.getvalue()


def test_format_duration():
    assert format_duration(4.2) == "4s"
    assert format_duration(75) == "1m15s"
    assert format_duration(3700) == "1h01m"
