import io

from tqdm import tqdm

from pipeline.progress import LOG_STEPS, LogLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_tenth_and_no_carriage_returns():
    log = io.StringIO()
    # disable=False: tqdm read the test session's TQDM_DISABLE=1 when it was imported
    with progress_bar(total=437, desc="sew", unit="step", file=log, disable=False) as bar:
        assert isinstance(bar, LogLines)
        for _ in range(437):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == LOG_STEPS + 1  # 0 %, 10 %, …, 100 %
    assert lines[0].startswith("sew:   0%") and "437/437" in lines[-1]
    log = io.StringIO()
    with progress_bar(total=100, desc="cut short", file=log, disable=False) as bar:
        bar.update(37)
    assert log.getvalue().splitlines()[-1].split("|")[-1].startswith(" 37/100")  # where it stopped


def test_a_terminal_keeps_the_live_bar_and_disable_silences():
    term = Terminal()
    bar = progress_bar(total=3, file=term, disable=False)
    assert type(bar) is tqdm
    bar.close()
    quiet = io.StringIO()
    for _ in progress_bar(range(5), file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""
