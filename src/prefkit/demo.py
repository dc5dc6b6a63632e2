"""`make demo` / `prefkit demo`: a tour of prefkit on the bundled example files and the lab.

Steps 1-9 tour the data layer, the feedback store, a labelling campaign, an arena leaderboard,
direct alignment and a reward model; step 10 runs the whole loop in the lab and step 11 RL with
a verifiable reward (DAPO on a checkable task).

Ctrl-C stops the tour with :class:`DemoInterrupted` (a ``KeyboardInterrupt``, so the CLI exits
130) whose message names the step that stopped -- in steps 10 and 11 the lab stage too -- and
says how to resume: each lab caches every finished stage under ``--workdir``, so the same
command continues from them; steps 1-9 are quick and run again.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .data.examples import EXAMPLES, example_path

STEPS = (
    "read and check every format", "bad input named precisely", "statistics",
    "conversions", "the feedback store", "a labelling campaign (prefkit serve)",
    "an arena leaderboard",
    "direct alignment of a tiny Llama", "a reward model from simulated annotators",
    "the loop: prefkit lab run", "RL with a verifiable reward (DAPO)",
)
"""The tour's steps, in order (their numbers are the ones the tour prints)."""

LAB_FOLDERS = {10: "lab", 11: "lab-rlvr"}
"""The steps that run a lab, and its folder under ``--workdir`` (its stages are cached there)."""
FIRST_LAB_STEP = min(LAB_FOLDERS)


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C during the tour; ``str()`` says where it stopped and how to resume."""


class _Position:
    """Where the tour is: its step (1-based, 0 before the first) and, in the last step, the lab's
    :class:`~prefkit.lab.progress.LabProgress`."""

    def __init__(self) -> None:
        self.step = 0
        self.lab: Any = None


def interrupted_message(position: _Position, workdir: str | None) -> str:
    """What a Ctrl-C at ``position`` says: the step (and lab stage) that stopped and how a
    rerun continues; ``workdir`` None: the tour ran in a temporary folder (now deleted)."""
    step = max(position.step, 1)
    where = f"demo interrupted in step {step} of {len(STEPS)} ({STEPS[step - 1]})"
    lab = position.lab
    if lab is not None:
        where += f", {lab.where()}"
    if workdir is None:
        return (f"{where}; this demo ran in a temporary folder, now deleted: run prefkit demo "
                "--workdir DIR (as make demo does) so that a rerun resumes the lab from its "
                "cached stages")
    again = shlex.join(["prefkit", "demo", "--workdir", str(workdir)])
    quick = f"steps 1-{FIRST_LAB_STEP - 1} run again"
    if lab is not None and lab.finished:
        cached = lab.stage_dir or str(Path(workdir) / LAB_FOLDERS[step] / "stages")
        return (f"{where}; the lab's finished stages ({', '.join(lab.finished)}) are cached in "
                f"{cached}: run {again} again to resume the lab from them ({quick}; the "
                "interrupted stage starts over)")
    return (f"{where}; run {again} again to continue ({quick}; the labs of steps "
            f"{FIRST_LAB_STEP}-{len(STEPS)} resume from their cached stages once they exist)")


def run_tour(workdir: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the tour; prints a readable walk-through (unless ``quiet``) and returns a summary.
    Ctrl-C prints where the tour stopped and how to resume on stderr (also when ``quiet``) and
    raises :class:`DemoInterrupted` with that message (module docstring)."""
    position = _Position()
    try:
        return _tour(workdir, quiet, position)
    except KeyboardInterrupt:
        message = interrupted_message(position, None if workdir is None else str(workdir))
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[yellow]{escape(message)}[/yellow]")
        raise DemoInterrupted(message) from None


def _tour(workdir: str | Path | None, quiet: bool, position: _Position) -> dict[str, Any]:
    from .data.io import detect_source_format, read_records, write_records
    from .data.stats import feedback_stats
    from .data.store import FeedbackStore
    from .data.validate import validate_file

    console = Console(stderr=quiet, quiet=quiet, highlight=False)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="prefkit-demo-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"workdir": str(work)}

    console.rule("[bold]prefkit demo: the feedback data layer")
    position.step = 1
    console.print("1. Every format users arrive with is read, checked and typed:")
    table = Table("file", "format", "records", "kinds", "valid")
    files = {}
    for name in EXAMPLES:
        path = example_path(name)
        fmt = detect_source_format(path).name
        report = validate_file(path)
        kinds = ", ".join(f"{n} {k}" for k, n in report.kinds.items())
        table.add_row(name, fmt, str(report.rows), kinds, "yes" if report.ok else "NO")
        files[name] = {"format": fmt, "records": report.rows, "ok": report.ok}
    console.print(table)
    summary["files"] = files

    position.step = 2
    console.print("\n2. Bad input is named precisely (file:line, field, what was expected):")
    bad = example_path("bad.jsonl")
    report = validate_file(bad, skip_invalid=True, output_path=work / "bad.valid.jsonl",
                           rejected_path=work / "bad.rejected.jsonl")
    for error in report.errors:
        text = str(error).replace(str(example_path()), "examples")
        console.print(f"  [red]x[/red] {escape(text)}")
    console.print(f"  --skip-invalid kept {report.valid} good rows; the {report.invalid} bad "
                  "lines went byte for byte to bad.rejected.jsonl")
    summary["validation"] = {"valid": report.valid, "invalid": report.invalid,
                             "errors": dict(report.error_counts)}

    position.step = 3
    console.print("\n3. Statistics (here of K-wise rankings and pairwise judgements):")
    rank_stats = feedback_stats(read_records(example_path("rankings.jsonl")))
    pair_stats = feedback_stats(read_records(example_path("alpaca_eval.json")))
    ranking = rank_stats["ranking"]
    pairwise = pair_stats["outcomes"]["pairwise"]
    longer = pair_stats["length_bias"]["chosen_longer_rate"]
    console.print(f"  rankings: {ranking['count']} rankings of {ranking['mean_responses']:.1f} "
                  f"responses on average, {ranking['strict_rate']:.0%} strict (no ties)")
    console.print(f"  AlpacaEval judgements: tie rate {pairwise['tie_rate']:.0%}, both-bad "
                  f"{pairwise['both_bad_rate']:.0%}; the chosen output is the longer one in "
                  f"{longer:.0%} of decisive pairs")
    summary["stats"] = {"rankings": ranking, "alpaca_eval": pairwise,
                        "alpaca_eval_chosen_longer_rate": longer}

    position.step = 4
    console.print("\n4. Conversions say what they dropped and why:")
    from .data.convert import ConversionReport, to_kind

    conversions = {}
    for name, target, label in (
        ("rankings.jsonl", "trl-preference", "rankings -> all implied pairs"),
        ("ratings.jsonl", "trl-preference", "ratings -> pairs (gap >= 1)"),
        ("alpaca_eval.json", "trl-preference", "AlpacaEval judgements -> TRL pairs"),
        ("pairs.jsonl", "trl-unpaired", "pairs -> KTO thumbs up/down"),
    ):
        conv = ConversionReport()
        out = work / f"{Path(name).stem}.{target}.jsonl"
        fmt_kind = "binary" if target == "trl-unpaired" else "comparison"
        records = to_kind(read_records(example_path(name)), fmt_kind, report=conv)
        written = write_records(records, out, target)
        dropped = {**conv.dropped, **written.dropped}
        line = f"  {label}: {conv.inputs} in -> {written.written} out"
        if dropped:
            line += f"; records dropped: {dropped}"
        if conv.skipped:
            line += f"; not paired: {conv.skipped}"
        console.print(line)
        conversions[label] = {"in": conv.inputs, "out": written.written, "dropped": dropped,
                              "skipped": dict(conv.skipped)}
    summary["conversions"] = conversions

    position.step = 5
    console.print("\n5. The feedback store never loses or doubles a record:")
    store = FeedbackStore(work / "feedback.db")
    first = second = 0
    for name in EXAMPLES:
        first += store.import_file(example_path(name)).inserted
    for name in EXAMPLES:
        second += store.import_file(example_path(name)).inserted
    exported = store.export(work / "all.parquet", "prefkit")
    console.print(f"  first import stored {first} records; importing everything again stored "
                  f"{second} more; export wrote {exported.written} records to all.parquet")
    console.print(f"  store: {store.stats()['kinds']}")
    summary["store"] = {"first_import": first, "second_import": second,
                        "exported": exported.written}
    store.close()

    position.step = 6
    summary["campaign"] = _campaign_tour(console, work)
    position.step = 7
    summary["arena"] = _arena_tour(console)
    position.step = 8
    summary["alignment"] = _alignment_tour(console, work)
    position.step = 9
    summary["reward_model"] = _reward_model_tour(console, work)
    position.step = 10
    summary["lab"] = _lab_tour(console, work, keep=tmp is None, position=position)
    position.step = 11
    position.lab = None
    summary["rlvr"] = _rlvr_tour(console, work, position=position)
    console.rule("done - next: `prefkit data validate YOUR_FILE`, see README")
    if tmp is not None:
        tmp.cleanup()
    return summary


CAMPAIGN_PEOPLE = (
    ("careful", {"temperature": 0.05}),
    ("quick", {"temperature": 0.2, "flip_rate": 0.05}),
    ("wordy", {"temperature": 0.1, "length_bias": 0.5}),
    ("first-pick", {"temperature": 0.1, "position_bias": 0.8}),
    ("careful-2", {"temperature": 0.05, "seed": 1}),
)
"""The simulated people of step 6: a gold-following pair, a hasty one, one who likes longer
answers and one who favours whatever is shown first."""


def _campaign_tour(console: Console, work: Path) -> dict[str, Any]:
    """Step 6: a pairwise campaign of the annotation app, labelled by simulated people through
    the app's own rules (leases, overlap 3, random display order), and what the admin page
    shows: agreement, each person against the others' majority, position bias."""
    import random

    from .data.store import FeedbackStore
    from .lab.annotators import SimulatedAnnotator
    from .lab.tasks import SortTask
    from .serve import service as svc
    from .serve.simulate import simulate_campaign
    from .serve.stats import campaign_stats
    from .serve.tasks import TaskSettings

    console.print("\n6. A labelling campaign in the annotation app's store (prefkit serve): 60 "
                  "sort answers to compare, 3 labels each, 5 simulated people:")
    db = work / "campaign.db"
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    task, rng = SortTask(), random.Random(0)
    items = []
    while len(items) < 60:
        prompt = task.sample_prompt(rng)
        pair = [task.demonstration(prompt, rng, 0.9), task.demonstration(prompt, rng, 0.5)]
        if pair[0] != pair[1]:  # a pairwise item compares two different answers
            items.append({"prompt": prompt, "responses": pair})
    with FeedbackStore(db) as store:
        campaign = svc.create_campaign(store, "sort-answers", TaskSettings("pairwise"), items,
                                       overlap=3)
        people = []
        for name, options in CAMPAIGN_PEOPLE:
            person = svc.authenticate(store, svc.add_annotator(store, name))
            people.append((person, SimulatedAnnotator(name, task.gold_reward, **options)))
        labels = simulate_campaign(store, campaign, people)
        stats = campaign_stats(store, campaign)
    agreement = stats["agreement"]
    console.print(f"  {labels} labels; {stats['progress']['complete']} of "
                  f"{stats['progress']['items']} items have their 3; Krippendorff's alpha "
                  f"{agreement['krippendorff_alpha_nominal']:.2f}, Fleiss' kappa "
                  f"{agreement['fleiss_kappa']:.2f}")
    table = Table("person", "labels", "agrees with the others' majority",
                  "picks the first-shown answer")
    for row in stats["annotators"]:
        low, high = row["first_shown_ci"] or (None, None)
        table.add_row(row["name"], str(row["labels"]),
                      "-" if row["majority_agreement"] is None
                      else f"{row['majority_agreement']:.0%}",
                      "-" if row["first_shown_rate"] is None else
                      f"{row['first_shown_rate']:.0%} ({low:.0%}-{high:.0%})")
    console.print(table)
    console.print("  With people instead: prefkit serve add-annotator NAME --db feedback.db; "
                  "prefkit serve campaign create NAME --task pairwise --items FILE --overlap 3 "
                  "--db feedback.db; prefkit serve --db feedback.db (see README)")
    judges = _judges_vs_people(console, db, campaign, task)
    return {"labels": labels, "agreement": agreement, "annotators": stats["annotators"],
            "judges": judges}


def _judges_vs_people(console: Console, db: Path, campaign: Any, task: Any) -> dict[str, Any]:
    """The lab's simulated LLM judges checked against the campaign's labels, as `prefkit
    judge validate` does: accuracy, Cohen's kappa, and position bias before / after judging
    both orders."""
    from .data.store import FeedbackStore
    from .evaluate.judge_agreement import agreement_report, requests_from_labels
    from .judges.bias import judge_both_orders
    from .judges.jury import Jury
    from .lab.simulated_judge import LAB_JUDGE_TEMPERATURE, lab_judge_pool
    from .serve import service as svc

    with FeedbackStore(db) as store:
        records = [label.record for label in svc.campaign_labels(store, campaign)]
    pool = lab_judge_pool(task.gold_reward, temperature=LAB_JUDGE_TEMPERATURE)
    judges = {"fair": pool[0], "positional": pool[1],
              "jury of 4 (majority)": Jury(pool, aggregate="majority")}
    requests = requests_from_labels(records)
    table = Table("AI judge", "accuracy vs the people", "Cohen's kappa",
                  "picks the first-shown", "flips with the order")
    out = {}
    for name, judge in judges.items():
        report = agreement_report(judge_both_orders(judge, requests), records)
        pos = report["position"]
        out[name] = {k: report[k] for k in ("accuracy", "cohen_kappa")}
        out[name].update(p_prefer_first=pos["p_prefer_first"], flip_rate=pos["flip_rate"])
        table.add_row(name, f"{report['accuracy']:.0%}",
                      f"{report['cohen_kappa']:.2f}", f"{pos['p_prefer_first']:.0%}",
                      f"{pos['flip_rate']:.0%}")
    console.print("  The lab's simulated LLM judges on the same 180 labelled pairs, each judged "
                  "in both orders (prefkit judge validate):")
    console.print(table)
    return out


def _arena_tour(console: Console) -> dict[str, Any]:
    """A leaderboard from simulated votes among models of known strength."""
    import numpy as np
    from scipy.special import expit
    from scipy.stats import spearmanr

    from .rank import aggregate_pairwise, bt_leaderboard

    console.print("\n7. An arena leaderboard from 20,000 simulated votes (8 models of known "
                  "strength, 5% ties), with 95% bootstrap intervals and CI-aware ranks:")
    rng = np.random.default_rng(0)
    names = [f"model-{k}" for k in range(1, 9)]  # model-8 is the strongest
    strength = np.linspace(-1.0, 1.0, len(names))
    a = rng.integers(0, len(names), 20_000)
    b = (a + rng.integers(1, len(names), len(a))) % len(names)
    outcome = np.where(rng.random(len(a)) < 0.05, 2,
                       np.where(rng.random(len(a)) < expit(strength[a] - strength[b]), 0, 1))
    board = bt_leaderboard(aggregate_pairwise(a, b, outcome, len(names)), names, bootstrap=100)
    table = Table("rank", "model", "rating", "95% interval", "votes")
    for row in board.rows():
        table.add_row(str(row["rank"]), row["model"], f"{row['rating']:.0f}",
                      f"{row['ci_low']:.0f} - {row['ci_high']:.0f}", str(row["votes"]))
    console.print(table)
    rho = float(spearmanr(board.rating, strength).statistic)
    console.print(f"  Spearman correlation with the hidden true strengths: {rho:.3f}")
    return {"spearman": rho, "leaderboard": board.rows()}


ALIGN_RUNS = (("dpo", "pairs"), ("ipo", "pairs"), ("simpo", "pairs"), ("dpo+0.2*sft", "pairs"),
              ("lipo", "rankings"), ("listwise_dpo", "rankings"), ("kto", "binary"))


def _alignment_tour(console: Console, work: Path) -> dict[str, Any]:
    """Step 8: direct preference optimization of a tiny model with several losses."""
    import contextlib
    import io
    import logging

    from .lab.wordworld import build_word_world
    from .train.preference import PreferenceConfig, train_preference

    logging.getLogger("transformers").setLevel(logging.ERROR)
    console.print("\n8. Direct alignment of a tiny Llama (word world: responses made of 'good' "
                  "and 'bad' words) with several losses, 40 steps each; held-out pairs ranked "
                  "by each policy's implicit reward:")
    with contextlib.redirect_stderr(io.StringIO()):
        world = build_word_world(work / "word_world")
    table = Table("loss", "data", "final train loss", "held-out ranking accuracy", "seconds")
    runs = {}
    for loss, data in ALIGN_RUNS:
        config = PreferenceConfig(
            model=world["model"], data=world[data], eval_data=world["eval_pairs"]
            if data == "pairs" else None, loss=loss, output_dir=str(work / "align" / loss),
            max_steps=40, batch_size=8, learning_rate=3e-3, lr_scheduler="constant",
            logging_steps=10, save_steps=0, save_final=False, progress=False,
            reference_cache=str(work / "reference_cache"))
        with contextlib.redirect_stderr(io.StringIO()):  # per-step lines; metrics.jsonl has them
            result = train_preference(config)
        metrics = result.fit.metrics
        accuracy = metrics.get("eval/rewards/accuracies")
        runs[loss] = {"loss": metrics["loss"], "eval_accuracy": accuracy,
                      "seconds": round(result.fit.seconds, 2), "data": data}
        table.add_row(loss, data, f"{metrics['loss']:.3f}",
                      "-" if accuracy is None else f"{accuracy:.2f}", f"{result.fit.seconds:.1f}")
    console.print(table)
    console.print("  (the same command trains a real checkpoint: `prefkit train preference "
                  "--model PATH --data pairs.jsonl --loss dpo`)")
    return runs


def _reward_model_tour(console: Console, work: Path) -> dict[str, Any]:
    """Step 9: a reward model from noisy simulated annotators, evaluated against the truth."""
    import contextlib
    import io
    import json

    from .evaluate.rm import evaluate_pairs
    from .lab import rm_data
    from .lab.wordworld import build_word_world
    from .rewards.scoring import score_groups
    from .train.reward import RewardConfig, train_reward

    console.print("\n9. A reward model from 512 pairs labelled by noisy simulated annotators "
                  "(Bradley-Terry on a known gold reward), checked on 512 new pairs:")
    folder = work / "word_world"
    with contextlib.redirect_stderr(io.StringIO()):
        world = build_word_world(folder)
    train, _ = rm_data.noisy_pairs(512, temperature=0.1, seed=1)
    test, ceiling = rm_data.noisy_pairs(512, temperature=0.1, seed=2)
    data = folder / "rm_pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    config = RewardConfig(model=world["model"], data=str(data), objective="bt",
                          output_dir=str(work / "rm"), max_steps=150, batch_size=16,
                          learning_rate=3e-3, lr_scheduler="constant", logging_steps=50,
                          save_steps=0, save_final=False, progress=False)
    with contextlib.redirect_stderr(io.StringIO()):
        result = train_reward(config)
    rewards, lengths = score_groups(result.model, [r["prompt"] for r in test],
                                    [[r["chosen"], r["rejected"]] for r in test],
                                    tokenizer=result.tokenizer, with_lengths=True)
    report = evaluate_pairs(rewards[:, 0].numpy(), rewards[:, 1].numpy(),
                            chosen_lengths=lengths[:, 0].numpy(),
                            rejected_lengths=lengths[:, 1].numpy())
    accuracy = report["accuracy"]
    console.print(f"  accuracy {accuracy:.3f} against the annotators' labels; the noise ceiling "
                  f"(the gold reward itself) is {ceiling:.3f}: {accuracy / ceiling:.0%} of it")
    console.print(f"  calibration error (ECE) {report['calibration']['ece']:.3f}; "
                  "`prefkit rm eval` adds RewardBench sections, length rules, reliability plots")
    return {"accuracy": accuracy, "noise_ceiling": ceiling,
            "ece": report["calibration"]["ece"]}


RLVR_LAB = dict(task="sort_exact", methods=["dapo"], n_prompts=512, k=2, n_eval=128,
                rm_steps=10, best_of_n=1, overopt_length_bias=0.0, curve_every=0,
                rl_iterations=40, rl_prompts_per_iteration=32, rl_generations=4,
                rl_learning_rate=3e-4, eval_samples=8, seed=0)
"""Step 11's lab: DAPO on ``sort_exact``'s checker (tests/test_rlvr_gains.py, ~30 s)."""


def _rlvr_tour(console: Console, work: Path, position: _Position | None = None
               ) -> dict[str, Any]:
    """Step 11: DAPO trained on a verifiable task's checker (right only when the whole list
    is sorted), its held-out accuracy against the SFT policy's with the paired 95% interval
    of the gain (its lab caches its stages too)."""
    import contextlib
    import io

    from .commands.lab import accuracy_table
    from .lab.pipeline import run_lab
    from .lab.progress import LabProgress, to_stream

    console.print("\n11. RL with a verifiable reward (`prefkit lab run --task sort_exact --set "
                  "methods=dapo`): the answer is checked, not judged -- DAPO (decoupled "
                  "clipping, dynamic sampling, token-level loss) trains on the checker for 40 "
                  "iterations; 8 answers to each of 128 held-out prompts are checked:")
    progress = LabProgress(to_stream())
    if position is not None:
        position.lab = progress
    with contextlib.redirect_stderr(io.StringIO()):
        result = run_lab(workdir=str(work / LAB_FOLDERS[11]), progress=progress,
                         **RLVR_LAB)
    console.print(accuracy_table(result))
    dapo = result["methods"]["dapo"]
    console.print(f"  accuracy {result['methods']['sft']['accuracy']:.3f} -> "
                  f"{dapo['accuracy']:.3f}; `--reward verifiable:math|code|rg:TASK` does the "
                  "same on your prompts (README: RL with verifiable rewards)")
    return {name: {k: m.get(k) for k in ("accuracy", "accuracy_gain", "accuracy_gain_ci")}
            for name, m in result["methods"].items() if m.get("accuracy") is not None}


def _lab_tour(console: Console, work: Path, keep: bool = True,
              position: _Position | None = None) -> dict[str, Any]:
    """Step 10: the loop on the lab's sort task, judged by the known gold reward (its
    :class:`LabProgress` goes to ``position``, for a Ctrl-C message)."""
    import contextlib
    import io

    from .commands.lab import leaderboard_table, methods_table
    from .lab.pipeline import run_lab
    from .lab.progress import LabProgress, to_stream
    from .report import write_lab_report

    console.print("\n10. The loop (`prefkit lab run`, the default config): an SFT policy for "
                  "'sort: 7 3 9' samples answers, a pool of biased simulated annotators labels "
                  "pairs into the feedback store, a reward model is trained, the policy is "
                  "aligned offline (DPO, RPO, IPO, SimPO, KTO, LiPO, RAFT) and online against "
                  "the reward model (GRPO, PPO, RLOO), best-of-8 samples with it, and every "
                  "policy is judged by the gold reward (progress on stderr; every finished "
                  "stage is cached, so a rerun with the same --workdir resumes):")
    progress = LabProgress(to_stream())  # each stage on stderr, as `prefkit lab run` does
    if position is not None:
        position.lab = progress
    with contextlib.redirect_stderr(io.StringIO()):
        result = run_lab(workdir=str(work / LAB_FOLDERS[10]), progress=progress)
    console.print(methods_table(result))
    console.print(leaderboard_table(result["leaderboard"]))
    over = result["overoptimization"]
    peak = over["x_at_gold_max"]
    console.print(f"  over-optimization: best-of-n against a length-biased reward model - the "
                  f"proxy keeps rising while the gold reward peaks at n = {peak:g} "
                  f"and falls; {result['reward_model']['heldout']['accuracy']:.2f} held-out "
                  f"accuracy for the proxy reward model")
    if keep:
        report = write_lab_report(result, work / LAB_FOLDERS[10] / "report.html")
        console.print(f"  the full report (tables and figures): {report}")
    else:
        console.print("  (run `prefkit demo --workdir DIR` to keep the files and an HTML report)")
    return result["methods"]
