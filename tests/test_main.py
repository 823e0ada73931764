"""``python -m fastgru`` (the README's main job): its modes run and report."""

import pytest

from fastgru.__main__ import main

SMALL = ["--batch", "2", "--steps", "3", "--features", "4", "--units", "5", "--repeat", "2"]


@pytest.mark.parametrize("mode", [[], ["--frozen"], ["--train"], ["--last-only", "--frozen"]])
def test_main_job_reports(mode, capsys):
    assert main(SMALL + mode) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastgru ") and "ms per call" in out and "GFLOP/s" in out
    what = ("training step" if "--train" in mode
            else "inference (frozen)" if "--frozen" in mode else "inference,")
    assert f"workload: {what}" in out
    assert ("(frozen)" in out.splitlines()[1]) == ("--frozen" in mode)


def test_main_job_modes_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(SMALL + ["--train", "--frozen"])
