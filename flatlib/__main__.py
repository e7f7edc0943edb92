"""Command line: ``python -m flatlib {run,reproduce,compare,scoreboard,check,fingerprints,fetch-data,chapters}``."""
from __future__ import annotations

import argparse
import os
import signal
import sys


def _shown(path) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    from pathlib import Path

    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flatlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run one chapter with parameters (papermill)")
    run_p.add_argument("chapter")
    run_p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                       help="set a parameter; repeat for several")
    run_p.add_argument("--params", default="", metavar='"KEY=VALUE ..."',
                       help="parameters as one string, split on spaces outside brackets and quotes "
                            "(widths=[8, 8] lr=0.1); -p wins where both set a key")
    run_p.add_argument("--out", help="output folder (default: runs/<chapter>-<hash of parameters>/)")
    run_p.add_argument("--no-progress", action="store_true")
    run_p.add_argument("--force-publish", action="store_true",
                       help="let a run into its chapter's published folder (book/<folder>) replace the published "
                            "run although its parameters differ from those chapters.yml publishes; the page then "
                            "shows numbers `make reproduce` will not give. Without it such a run is refused; a "
                            "run into another chapter's folder is refused either way")
    run_p.add_argument("--page", action="store_true",
                       help="then build a web page of the run (in <out>/page/; offline, never executed again)")
    reproduce_p = sub.add_parser("reproduce", help="re-run the stale published chapters in place (say which, and how "
                                                   "long), then update the scoreboard")
    reproduce_p.add_argument("--all", action="store_true", help="re-run every published chapter, current or not")
    compare_p = sub.add_parser("compare", help="compare a run's tables and headline with the published run's, "
                                               "number for number; exit 1 when they differ")
    compare_p.add_argument("run", help="the output folder of a chapter run")
    compare_p.add_argument("--against", metavar="FOLDER",
                           help="the run to compare with (default: the published run of the same parameters)")
    compare_p.add_argument("--rtol", type=float, default=0.0,
                           help="relative tolerance (default 0: equal to the last bit)")
    sub.add_parser("scoreboard", help="regenerate the scoreboard in book/intro.md from the summaries")
    sub.add_parser("check", help="name the stale published chapters (a version their numbers used has changed "
                                 "since); exit 1 if any")
    fingerprints_p = sub.add_parser("fingerprints", help="recompute the canaries of every versioned computation and "
                                                         "compare them with the committed fingerprints")
    fingerprints_p.add_argument("--record", action="store_true",
                                help="re-record the fingerprints (after a deliberate change and its version bump)")
    fetch_p = sub.add_parser("fetch-data", help="fetch and verify datasets into the data cache")
    fetch_p.add_argument("names", nargs="*", default=["mnist", "fashion_mnist"])
    sub.add_parser("chapters", help="list chapters and their parameters")
    args = parser.parse_args(argv)

    from flatlib.engine.data import DataError
    from flatlib.publishing import manifest, runner, scoreboard
    from flatlib.publishing.compare import CompareError

    try:
        if args.command == "run":
            overrides = {**runner.parse_params(args.params), **dict(args.param)}
            summary = runner.run(args.chapter, overrides, args.out, progress=not args.no_progress,
                                 force_publish=args.force_publish)
            folder = runner.out_dir_of(args.chapter, overrides, args.out)
            print(f"folder:  {_shown(folder)}{os.sep}  (the executed notebook, summary.json, tables and figures)")
            if args.page:
                print(f"page:    {_shown(runner.page(folder))}")
            else:
                print("page:    not built (add --page, as `make chapter` does)")
            rows = summary.get("scoreboard", [])
            print("verdict: " + ("; ".join(f"{row['claim']} {row['verdict']}" for row in rows) if rows else
                                 "none (this chapter judges no claim)"))
        elif args.command == "reproduce":
            runner.reproduce(everything=args.all)
            scoreboard.update()
        elif args.command == "compare":
            from flatlib.publishing.compare import compare

            result = compare(args.run, args.against, args.rtol)
            print(result)
            if not result.identical:
                return 1
        elif args.command == "check":
            reasons = runner.stale()
            for folder, why in reasons.items():
                print(f"stale: book/{folder}: {why}")
            changed = runner.edited()
            for folder, why in changed.items():
                print(f"edited: book/{folder}: {why}")
            for folder, what in runner.other_environments().items():
                print(f"other environment (not stale): book/{folder}: {what}; a re-run here starts from an empty "
                      "store and may differ in the last bits")
            if reasons or changed:
                print("re-run them: python -m flatlib reproduce (only the stale ones; it resumes from the store); "
                      "an edited run: python -m flatlib reproduce --all, or restore its files from git",
                      file=sys.stderr)
                return 1
            print(f"all {len(manifest.published())} published chapters are current")
        elif args.command == "fingerprints":
            from flatlib.experiments import fingerprints

            if args.record:
                fingerprints.record()
                print(f"recorded {fingerprints.PATH}")
            else:
                problems = fingerprints.check(fingerprints.recorded(), fingerprints.compute())
                for problem in problems:
                    print(problem)
                if problems:
                    return 1
                print(f"every fingerprint matches {fingerprints.PATH}")
        elif args.command == "scoreboard":
            changed = scoreboard.update()
            print("scoreboard updated" if changed else "scoreboard unchanged")
        elif args.command == "fetch-data":
            from flatlib.engine import data

            for name in args.names:
                print(f"{name}: {data.fetch(name)}")
        elif args.command == "chapters":
            from flatlib.publishing import params as fparams

            for name, chapter in runner.manifest().items():
                print(f"{name}  ({chapter.source.relative_to(runner.report.ROOT)})")
                for key, value in runner.parameters(chapter.source).items():
                    if key == "out_dir":  # where the runner puts a run's files (--out), not a parameter
                        continue
                    spec = chapter.ranges.get(key)
                    print(f"    {key} = {value!r}" + (f"    ({fparams.describe(spec)})" if spec else ""))
    except (runner.ChapterError, CompareError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a further signal must not turn this into a traceback
            signal.signal(signum, signal.SIG_IGN)
        return 128 + getattr(stop, "signum", signal.SIGINT)  # as a shell reports it; the runner said what was kept
    return 0


if __name__ == "__main__":
    sys.exit(main())
