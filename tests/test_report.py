"""msabn_report never loses a report: written aside and swapped in whole, user files kept, tables it can no longer
update named; and the faults of its input and output (damaged or stale runs, a wrong preset, an output it cannot
write) end in clear messages; its verdicts say what the seeds rule out (n, the mean and its 95% interval, the MDE)
and are made, and counted, by one rule."""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
from pathlib import Path

import pytest

import msabn.report.write as report
from msabn.experiments import RESULTS_VERSION, fingerprint, get_experiment, run_folder, write_status
from msabn.report import (
    ALPHA,
    MANIFEST,
    POWER,
    RunRecord,
    collect_runs,
    main,
    markdown_curves,
    mde,
    orderings,
    paired,
    t_quantile,
    verdict,
    write_report,
    write_table_run,
)

ACC = {
    "Base": [50, 52, 54],
    "ABN": [55, 55, 58],
    "MSABN": [54, 56, 58],
    "MSABN+Puzzle": [51, 52, 56],
    "MSABN (efficient)": [60, 60, 60],
}
QUIET = lambda s: None


def _runs(tmp: Path, tables=("table4", "table5"), seeds=(0,)) -> Path:
    for t in tables:
        for s in seeds: write_table_run(tmp / "runs", t, s, ACC)
    return tmp / "runs"


def _report(tmp: Path, *args: str) -> int:
    return main(["--preset", "tiny", "--runs-dir", str(tmp / "runs"), "--out", str(tmp / "pf"), *args])


def _snapshot(folder: Path) -> dict:
    "Every file under `folder` (hidden ones too) and its bytes."
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _left_behind(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if ".new-" in p.name or p.name.endswith(".old")]


# --- a new report never destroys the old one ---------------------------------------------------------------
def test_crash_mid_report_leaves_the_old_report_intact(tmp_path, monkeypatch):
    _runs(tmp_path)
    folder = write_report(tmp_path / "runs", tmp_path / "pf", "tiny", log=QUIET)
    before = _snapshot(folder)
    write_table_run(tmp_path / "runs", "table1", 0, {"Base": [1], "ABN": [2], "MSABN g·A": [3], "MSABN g·(1+A)": [4]})

    def broken(*a, **k): raise RuntimeError("disk full while drawing")
    monkeypatch.setattr(report, "curve_figure", broken)   # not reached: no Figs. 8/9 runs
    monkeypatch.setattr(report, "table_figure", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tmp_path / "runs", tmp_path / "pf", "tiny", log=QUIET)
    assert _snapshot(folder) == before, "a failed report must leave the earlier one exactly as it was"
    assert _left_behind(tmp_path / "pf") == [], "the unfinished new folder is removed"


def test_files_a_user_added_survive_the_next_report(tmp_path, capsys):
    _runs(tmp_path)
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    (folder / "notes.md").write_text("my notes on table 4")
    (folder / "drafts").mkdir(); (folder / "drafts" / "fig.svg").write_text("<svg/>")
    assert _report(tmp_path) == 0
    assert (folder / "notes.md").read_text() == "my notes on table 4"
    assert (folder / "drafts" / "fig.svg").read_text() == "<svg/>"
    assert json.loads((folder / MANIFEST).read_text())["files"].keys() >= {"README.md", "results.json", "table4_cub.md"}
    assert "notes.md" not in json.loads((folder / MANIFEST).read_text())["files"], ("the manifest lists only what the "
                                                                                    "report made")
    assert (
        "| [notes.md](tiny_seeds-0/notes.md) | not made by msabn_report (kept as it was) |"
        in (tmp_path / "pf" / "README.md").read_text()
    )


@pytest.mark.parametrize("how", ["gone", "half-written"])
def test_a_table_no_longer_complete_is_kept_as_it_was_and_named(tmp_path, capsys, how):
    _runs(tmp_path)
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    t5 = {f: (folder / f).read_bytes() for f in ("table5_cars.md", "table5_cars.png", "table5_cars_attention.png")}
    run5 = run_folder(tmp_path / "runs", "tiny", "table5", 0)
    if how == "gone": shutil.rmtree(run5)
    else: write_status(run5, "running", fingerprint(get_experiment("table5", "tiny"), 0))
    capsys.readouterr()
    assert _report(tmp_path) == 0
    out = capsys.readouterr().out
    why = "(their run folders are gone)" if how == "gone" else "(half-written, not reported)"
    assert (
        f"[not updated] table5: reported before, no complete runs now {why}; its earlier files are kept as they were"
        in out
    ), out
    assert {f: (folder / f).read_bytes() for f in t5} == t5
    assert "**Not updated: table5** (no complete runs now" in (folder / "README.md").read_text()
    assert "table5_cars.md) | Table 5 (Stanford Cars): ours beside the paper's (earlier report: not updated) |" in \
        (tmp_path / "pf" / "README.md").read_text()
    assert json.loads((folder / "results.json").read_text())["not_updated"].keys() == {"table5"}
    # the table's runs are back: it is updated and no longer named
    shutil.rmtree(run5, ignore_errors=True); write_table_run(tmp_path / "runs", "table5", 0, ACC)
    assert _report(tmp_path) == 0
    assert (
        "Not updated" not in (folder / "README.md").read_text()
        and "not_updated" not in (folder / "results.json").read_text()
    )


def test_fewer_seeds_than_before_keep_the_earlier_table(tmp_path, capsys):
    _runs(tmp_path, ("table4",), seeds=(0, 1))
    assert _report(tmp_path, "--seeds", "0", "1") == 0
    page = tmp_path / "pf" / "tiny_seeds-0-1" / "table4_cub.md"
    two = page.read_text()
    assert "n = 2" in two
    shutil.rmtree(run_folder(tmp_path / "runs", "tiny", "table4", 1))
    capsys.readouterr()
    # seed 0 is still complete: the report runs, table4 is not rewritten with n = 1
    assert _report(tmp_path, "--seeds", "0", "1") == 0
    assert (
        "[not updated] table4: reported before, seed(s) 1 reported before are not complete now"
        in capsys.readouterr().out
    )
    assert page.read_text() == two


def test_a_folder_made_for_other_seeds_is_refused_where_it_would_be_overwritten(tmp_path, capsys):
    _runs(tmp_path, ("table4",), seeds=(0, 1))
    assert _report(tmp_path, "--seeds", "0") == 0
    other = tmp_path / "pf" / "tiny_seeds-1"
    (tmp_path / "pf" / "tiny_seeds-0").rename(other)     # renamed by hand: it holds the seed-0 report
    before = _snapshot(other)
    assert _report(tmp_path, "--seeds", "1") == 2
    err = capsys.readouterr().err
    assert (
        "holds a report of preset 'tiny', seeds [0], not of preset 'tiny', seeds [1]" in err
        and "Nothing was changed" in err
    ), err
    assert _snapshot(other) == before
    # only a user's file is left there: nothing would be overwritten, so the report goes there and says so
    for f in other.iterdir():
        if f.name != MANIFEST: f.unlink()
    (other / "notes.md").write_text("mine")
    assert _report(tmp_path, "--seeds", "1") == 0
    assert "holds none of its files now: writing the preset tiny, seeds [1] report there" in capsys.readouterr().out
    assert (other / "notes.md").read_text() == "mine" and "seeds 1, n = 1" in (other / "table4_cub.md").read_text()


def test_pages_a_user_edited_are_kept_aside(tmp_path, capsys):
    _runs(tmp_path, ("table4",))
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    (folder / "table4_cub.md").write_text((folder / "table4_cub.md").read_text() + "\nMy comment.\n")
    (tmp_path / "pf" / "README.md").write_text((tmp_path / "pf" / "README.md").read_text() + "\nMy index note.\n")
    assert _report(tmp_path) == 0
    out = capsys.readouterr().out
    assert (folder / "table4_cub.edited.md").read_text().endswith("My comment.\n")
    assert "My comment." not in (folder / "table4_cub.md").read_text()
    assert (tmp_path / "pf" / "README.edited.md").read_text().endswith("My index note.\n")
    assert "table4_cub.md as table4_cub.edited.md: edited since msabn_report made it" in out, out
    assert "README.md was edited since msabn_report wrote it: kept as README.edited.md" in out, out


def test_an_index_page_msabn_report_did_not_make_is_left_alone(tmp_path, capsys):
    _runs(tmp_path, ("table4",))
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "README.md").write_text("# My project\n")
    assert _report(tmp_path) == 0
    assert (tmp_path / "pf" / "README.md").read_text() == "# My project\n"
    assert "was not made by msabn_report: left as it is, and not rewritten" in capsys.readouterr().out
    assert (tmp_path / "pf" / "tiny_seeds-0" / "table4_cub.md").is_file()


def test_a_report_killed_mid_swap_is_put_back(tmp_path, capsys):
    _runs(tmp_path, ("table4",))
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    (folder / "notes.md").write_text("mine")
    folder.rename(tmp_path / "pf" / ".tiny_seeds-0.old")        # killed between the two renames of the swap
    (tmp_path / "pf" / ".tiny_seeds-0.new-abc").mkdir()        # and its unfinished new folder
    assert _report(tmp_path) == 0
    out = capsys.readouterr().out
    assert "put tiny_seeds-0 back" in out and "removed .tiny_seeds-0.new-abc" in out, out
    assert (folder / "notes.md").read_text() == "mine" and _left_behind(tmp_path / "pf") == []
    assert ".tiny_seeds-0" not in (tmp_path / "pf" / "README.md").read_text(), "hidden folders are not listed"


# --- the fault sweep ------------------------------------------------------------------------------------------
def test_a_metrics_json_that_is_not_json_is_named_damaged(tmp_path):
    folder = write_table_run(_runs(tmp_path, ("table5",)), "table4", 0, ACC)
    (folder / "metrics.json").write_text('{"fingerprint": "')
    recs, left = collect_runs(tmp_path / "runs", "tiny")
    assert [r.name for r in recs] == ["table5"]
    assert left == ["tiny/table4/seed0: half-written (its metrics.json is damaged: not valid JSON), not reported"]


def test_a_metrics_json_without_its_numbers_is_left_out_not_a_crash(tmp_path, capsys):
    folder = write_table_run(_runs(tmp_path, ("table5",)), "table4", 0, ACC)
    m = json.loads((folder / "metrics.json").read_text()); del m["cells"]
    (folder / "metrics.json").write_text(json.dumps(m))          # same fingerprint: run_state calls it complete
    assert _report(tmp_path) == 0
    assert (
        "[left out] tiny/table4/seed0: damaged (its metrics.json has no cells), not reported" in capsys.readouterr().out
    )
    (folder / "metrics.json").write_text("[1, 2]")               # JSON, but not an object
    assert collect_runs(tmp_path / "runs", "tiny")[1] == [
        "tiny/table4/seed0: damaged (its metrics.json is JSON but not an object), not reported"]


def test_a_run_of_an_older_results_version_is_named_stale(tmp_path, monkeypatch):
    with monkeypatch.context() as m:   # the version fingerprint() reads, wherever the experiments module keeps it
        m.setitem(fingerprint.__globals__, "RESULTS_VERSION", RESULTS_VERSION - 1)
        write_table_run(tmp_path / "runs", "table4", 0, ACC)
    recs, left = collect_runs(tmp_path / "runs", "tiny")
    assert recs == [] and left == ["tiny/table4/seed0: stale (made with other settings or an older RESULTS_VERSION: "
                                   "its fingerprint is not today's), not reported"]


def test_an_output_folder_it_cannot_write_is_an_error_and_changes_nothing(tmp_path, monkeypatch, capsys):
    _runs(tmp_path, ("table4",))
    assert _report(tmp_path) == 0
    before = _snapshot(tmp_path / "pf")
    write_table_run(tmp_path / "runs", "table5", 0, ACC)
    os.chmod(tmp_path / "pf", stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(tmp_path / "pf", os.W_OK):   # root ignores the mode: make the temporary folder fail as it would
            def denied(*a, **k): raise PermissionError(13, "Permission denied", str(tmp_path / "pf"))
            monkeypatch.setattr(report.tempfile, "mkdtemp", denied)
        assert _report(tmp_path) == 2
    finally:
        os.chmod(tmp_path / "pf", stat.S_IRWXU)
    assert "Permission denied" in capsys.readouterr().err
    assert _snapshot(tmp_path / "pf") == before


def test_an_output_path_that_is_a_file_is_an_error(tmp_path, capsys):
    _runs(tmp_path, ("table4",))
    (tmp_path / "pf").write_text("not a folder")
    assert _report(tmp_path) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "pf").read_text() == "not a folder"


def test_no_runs_at_all_says_so_and_keeps_the_earlier_report(tmp_path, capsys):
    assert _report(tmp_path) == 2
    assert "does not exist: run `msabn_run all --preset tiny --seeds 0` first" in capsys.readouterr().err
    _runs(tmp_path, ("table4",))
    assert _report(tmp_path) == 0
    before = _snapshot(tmp_path / "pf")
    shutil.rmtree(tmp_path / "runs" / "tiny")
    (tmp_path / "runs" / "tiny").mkdir()
    assert _report(tmp_path) == 2
    err = capsys.readouterr().err
    assert "complete runs there: none" in err and "tiny_seeds-0 is left as it was" in err, err
    assert _snapshot(tmp_path / "pf") == before


def test_runs_of_another_preset_or_seeds_are_named_with_the_command(tmp_path, capsys):
    _runs(tmp_path, ("table4",))
    assert main(["--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "pf")]) == 2
    err = capsys.readouterr().err
    assert "no complete runs of preset 'smoke' and seeds [0, 1, 2]" in err and ("complete runs there: preset tiny, "
                                                                                "seed 0") in err, err
    # a command that works as it is
    assert f"`msabn_report --preset tiny --seeds 0 --runs-dir {tmp_path / 'runs'}`" in err
    assert _report(tmp_path, "--seeds", "5") == 2
    assert "complete runs there: preset tiny, seed 0" in capsys.readouterr().err
    assert not (tmp_path / "pf" / "tiny_seeds-5").exists()


def test_a_missing_attention_picture_is_said_on_the_page_not_a_crash(tmp_path):
    (write_table_run(_runs(tmp_path, ("table5",)), "table4", 0, ACC) / "attention.png").unlink()
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    assert (
        "Attention maps: none (`attention.png` is missing from the run folder of seed 0)."
        in (folder / "README.md").read_text()
    )
    assert not (folder / "table4_cub_attention.png").exists() and (folder / "table5_cars_attention.png").is_file()


def test_a_report_made_before_manifests_is_read_by_its_file_names(tmp_path, capsys):
    _runs(tmp_path)
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    (folder / MANIFEST).unlink()                       # as the committed paper_figures/ reports were made
    (folder / "notes.md").write_text("mine")
    t5 = (folder / "table5_cars.md").read_bytes()
    shutil.rmtree(run_folder(tmp_path / "runs", "tiny", "table5", 0))
    assert _report(tmp_path) == 0
    # its seeds read from results.json
    assert "[not updated] table5: reported before, no complete runs now" in capsys.readouterr().out
    assert (folder / "notes.md").read_text() == "mine" and (folder / "table5_cars.md").read_bytes() == t5
    assert (folder / MANIFEST).is_file()


def test_cost_files_are_rewritten_only_where_msabn_report_made_them(tmp_path, capsys):
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "cost_to_reproduce.md").write_text("# My own cost notes\n")
    _runs(tmp_path, ("table4",))
    # the FLOP counting is skipped: the page in the way is not msabn_report's
    assert _report(tmp_path, "--cost") == 0
    assert (tmp_path / "pf" / "cost_to_reproduce.md").read_text() == "# My own cost notes\n"
    assert "cost_to_reproduce.md was not made by msabn_report: left as it is" in capsys.readouterr().out


def test_deleting_a_table_that_is_not_updated_drops_it(tmp_path, capsys):
    _runs(tmp_path)
    assert _report(tmp_path) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    shutil.rmtree(run_folder(tmp_path / "runs", "tiny", "table5", 0))
    assert _report(tmp_path) == 0 and (folder / "table5_cars.md").is_file()
    for f in folder.glob("table5_cars*"): f.unlink()    # the user drops the table
    capsys.readouterr()
    assert _report(tmp_path) == 0
    assert "not updated" not in capsys.readouterr().out and "Not updated" not in (folder / "README.md").read_text()
    assert "table5" not in json.loads((folder / MANIFEST).read_text())["tables"]


# --- verdicts: what the seeds rule out ---------------------------------------------------------------------------
def test_the_mde_is_the_hand_computed_one():
    assert (ALPHA, POWER) == (0.05, 0.8)
    assert mde(1.0, 3) == pytest.approx((4.303 + 1.061) / math.sqrt(3), abs=1e-3) == pytest.approx(3.097, abs=1e-3)
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4) and t_quantile(0.8, 4) == pytest.approx(
        0.941, abs=5e-4
    )
    assert mde(2.5, 5) == pytest.approx((2.776 + 0.941) * 2.5 / math.sqrt(5), abs=2e-3)
    assert math.isnan(mde(math.nan, 1)) and mde(0.0, 3) == 0.0
    with pytest.raises(ValueError, match="expected a finite std >= 0"): mde(-1.0, 3)


@pytest.mark.parametrize("paper, ours, expected", [
    (4.0, [5.0, 3.0, 4.0], "the paper's sign"),               # 4 ± 1, n = 3: [+1.5, +6.5]
    (-4.0, [5.0, 3.0, 4.0], "the opposite sign"),
    (4.0, [-2.0, -4.0, -3.0], "the opposite sign"),           # -3 ± 1: [-5.5, -0.5] excludes 0
    (4.0, [0.5, -0.5, 0.0], "smaller than 1.3"),              # 0 ± 0.5: [-1.24, +1.24], 1.3 points or more ruled out
    (4.0, [5.0, -5.0, 0.0], "undecided"),                     # 0 ± 5: [-12.4, +12.4]
    (4.0, [3.0, 1.0, 2.0, 2.0, 2.0], "the paper's sign"),     # 2 ± 0.71, n = 5: [+1.1, +2.9]
    (4.0, [2.0], "one seed: not judged"), (-4.0, [-9.0], "one seed: not judged"), (4.0, [0.0], "one seed: not judged"),
    (4.0, [1.5, 1.5, 1.5], "the paper's sign"),               # std 0: the interval is the mean itself
    (-4.0, [1.5, 1.5], "the opposite sign"),
    (4.0, [0.0, 0.0, 0.0], "smaller than 0.1"),               # ... a zero one rules out everything but 0
    (None, [5.0, 3.0, 4.0], "above 0"), (0.0, [-5.0, -3.0, -4.0], "below 0"), (None, [5.0, -5.0, 0.0], "undecided"),
    (4.0, [], "not run"),
])
def test_each_verdict_branch(paper, ours, expected):
    assert verdict(paper, ours) == expected


def test_paired_reports_n_mean_interval_and_mde():
    p = paired(4.0, [5.0, 3.0, 4.0, math.nan])                # a seed without both numbers is dropped
    assert (p.n, p.mean, p.std, p.verdict) == (3, 4.0, 1.0, "the paper's sign") and p.mde == pytest.approx(
        3.097, abs=1e-3
    )
    assert (p.lo, p.hi) == pytest.approx((4 - 4.303 / math.sqrt(3), 4 + 4.303 / math.sqrt(3)), abs=1e-3)
    one = paired(4.0, [7.0])
    assert one.n == 1 and one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.mde) and math.isnan(one.lo)


def test_one_seed_is_not_judged_on_any_page(tmp_path):
    _runs(tmp_path, ("table4",), seeds=(0,))
    assert _report(tmp_path) == 0
    page = (tmp_path / "pf" / "tiny_seeds-0" / "table4_cub.md").read_text()
    rows = [l for l in page.splitlines() if " vs " in l and l.startswith("| ")]
    assert rows and all(l.endswith("| 1 | - | one seed: not judged |") for l in rows), rows
    assert "the paper's sign |" not in page and "the opposite sign |" not in page


ACC_OPP = {**ACC, "MSABN+Puzzle": [50, 51, 55]}   # loses 4 ± 1 to MSABN: [-6.5, -1.5], against the paper's +2.33


def test_the_table_page_shows_n_mean_interval_mde_verdict_and_the_rule(tmp_path):
    _runs(tmp_path, ("table4",), seeds=(0, 1, 2))
    for s in (0, 1, 2):
        shutil.rmtree(run_folder(tmp_path / "runs", "tiny", "table4", s))
        write_table_run(tmp_path / "runs", "table4", s, ACC_OPP)
    assert _report(tmp_path, "--seeds", "0", "1", "2") == 0
    folder = tmp_path / "pf" / "tiny_seeds-0-1-2"
    page = (folder / "table4_cub.md").read_text()
    assert ("| pair | ours: backbone (stands for) | split | paper (points) | ours: mean [95% CI] (points) | n | MDE "
            "(points) "
            "| verdict |") in page
    assert ("| ABN vs Base | resnet20 (ResNet-50) | test_iid | +10.34 | +4.0 [+1.5, +6.5] | 3 | 3.10 | the paper's "
            "sign |") in page
    assert ("| MSABN vs ABN | resnet20 (ResNet-50) | test_iid | +4.02 | +0.0 [-2.5, +2.5] | 3 | 3.10 | smaller than "
            "2.5 |") in page
    assert ("| MSABN+Puzzle vs MSABN | resnet20 (ResNet-50) | test (shifted) | +2.33 | -4.0 [-6.5, -1.5] | 3 | 3.10 "
            "| the opposite sign |") in page
    # the rule, so that a reader can check each verdict
    assert "95% confidence interval" in page and "ruled out" in page
    counted = "10 orderings: 4 the paper's sign, 2 the opposite sign, 2 smaller than X, 2 undecided"
    assert f"Counted (accuracy (%)): {counted}." in page
    # the summary: the same rule
    assert f"- Table 4 (CUB-200-2011), accuracy (%): {counted}" in (folder / "README.md").read_text()
    od = orderings(collect_runs(tmp_path / "runs", "tiny")[0], "table4")
    assert list(od.columns) == [
        "pair",
        "column",
        "backbone",
        "split",
        "paper",
        "ours_mean",
        "ours_std",
        "ci_lo",
        "ci_hi",
        "n",
        "mde",
        "verdict",
    ]


def _fig_run(seed: int, gain: float) -> RunRecord:
    ("Hand-made Figs. 8/9 results of one seed: copy-replace gains `gain` at 20% of the images annotated and `gain - 6` "
     "with all.")
    pts = [{"lambda_out": 0.9, "pool_size": 80, "fraction_annotated": 0.2, "acc": 10 + gain, "gain": gain},
           {"lambda_out": 0.0, "pool_size": 400, "fraction_annotated": 1.0, "acc": 4 + gain, "gain": gain - 6}]
    curve = {"before": {"acc": 9.0}, "vanilla": {"acc": 10.0}, "points": pts}
    return RunRecord(
        "fig8_9",
        "tiny",
        seed,
        Path("."),
        {
            "curves": [
                {
                    "source": "table5",
                    "figure": "Fig. 9",
                    "column": "ResNet-50",
                    "backbone": "resnet20",
                    "split": "test",
                    "curve": curve,
                }
            ]
        },
    )


def test_copy_replace_gains_get_the_tables_treatment():
    # Fig. 9, ResNet-50: paper +2 at 20%, +4.5 with all
    md = markdown_curves([_fig_run(0, 5.0), _fig_run(1, 7.0), _fig_run(2, 6.0)])
    assert "| gain: mean [95% CI] (points) | n | MDE (points) | paper gain | verdict |" in md, md
    assert "| +6.0 [+3.5, +8.5] | 3 | 3.10 | +2.0 | the paper's sign |" in md, md
    assert "| +0.0 [-2.5, +2.5] | 3 | 3.10 | +4.5 | smaller than 2.5 |" in md, md   # the paper's +4.5 is ruled out
    assert "Counted: 2 orderings: 1 the paper's sign, 0 the opposite sign, 1 smaller than X, 0 undecided." in md
    md = markdown_curves([_fig_run(0, -5.0), _fig_run(1, -7.0), _fig_run(2, -6.0)])
    assert "| -6.0 [-8.5, -3.5] | 3 | 3.10 | +2.0 | the opposite sign |" in md, md
    assert "| -6.0 | 1 | - | +2.0 | one seed: not judged |" in markdown_curves([_fig_run(0, -6.0)])


# --- a report on the user's own data ---------------------------------------------------------------------------
def _own_runs(runs: Path, seeds=(0, 1, 2)) -> str:
    ("Complete Table 4 runs (tiny protocol) on a CUB-layout folder `my_birds` of 10 classes, as msabn_run --set leaves "
     "them.")
    from msabn.core import save_json
    from msabn.experiments import experiment_folder, preset_folder, with_overrides
    exp = with_overrides(get_experiment("table4", "tiny"), {"dataset": "cub", "data": "my_birds"})
    for s in seeds:
        folder, fp = experiment_folder(runs, exp, s), fingerprint(exp, s)
        cells = [{"row": r.name, "column": c.paper, "backbone": c.backbone, "in_paper": r.in_paper,
                  **{f"{m}@{sp}": ACC[r.name][s] for m in ("acc", "balanced_acc") for sp in exp.data.eval_splits}}
                 for c, r in exp.cells()]
        folder.mkdir(parents=True)
        save_json(
            {
                "fingerprint": fp,
                "overrides": dict(exp.overrides),
                "cells": cells,
                "splits": list(exp.data.eval_splits),
                "data": {"train": 30, "test": 30},
                "num_classes": 10,
            },
            folder / "metrics.json",
        )
        (folder / "attention.png").write_bytes(b"")
        write_status(folder, "complete", fp)
    return preset_folder(exp)


def test_a_report_on_own_data_says_whose_data_and_sets_the_papers_numbers_apart(tmp_path):
    ("Before: titled 'Table 4: ... CUB-200-2011', the paper's numbers in our table's columns, and made by `msabn_run "
     "all`.")
    preset = _own_runs(tmp_path / "runs")
    folder = write_report(tmp_path / "runs", tmp_path / "pf", preset, [0, 1, 2], log=QUIET)
    page, index = (folder / "table4_cub.md").read_text(), (folder / "README.md").read_text()
    assert page.startswith("# Table 4's protocol on your data `my_birds`"), page[:200]
    assert "your data `my_birds` (a folder in the cub layout: 10 classes; train 30, test 30 images)" in page
    ours = page.split("## Accuracy (%)")[1].split("The paper's accuracy (%) on CUB-200-2011")[0]
    # the paper's numbers are not in our table ...
    assert "paper" not in ours and "40.62" not in ours, ours
    assert "| Base | 40.62 ± 1.985 | 44.68 ± 0.816 | 53.41 ± 0.792 |" in page  # ... but in their own, as the paper's
    assert "embedded" not in page + index
    assert (f"Made by `msabn_report --preset {preset} --seeds 0 1 2` from the complete runs of "
            "`msabn_run table4 --preset tiny --seeds 0 1 2 --set dataset=cub --set data=my_birds`.") in index, index
