"""`pyenroot spank start|cleanup|epilog|fanout ...`: internal, run by the SPANK plugin as the job user.

`start` prepares the step's container and becomes its stopped anchor process; `cleanup` runs at step end,
`epilog` at job end; `fanout` runs in srun before the launch (pyenroot/slurm/fanout.py). Results for the
plugin go to fd 3 (see pyenroot/slurm/reporter.py). `cli.main` reads the plugin's command line with
`quick_arguments` (argparse only for anything else), since it runs for every step.
"""

from __future__ import annotations

import os

ACTIONS = ("start", "cleanup", "epilog", "fanout")
SCOPES = ("job", "global")
FANOUT_MODES = ("auto", "sbcast", "off")


def plugin_flag(value: str) -> bool:
    """A boolean argument from the plugin, which writes exactly "y" or "n" (argv_push_bool in
    spank_plugin/common.c, after its own parse_bool of the user's words); anything else is a usage error."""
    if value not in ("y", "n"):
        import argparse

        raise argparse.ArgumentTypeError(f"expected y or n, not {value!r}")
    return value == "y"


def _names(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in value.split(",") if v))


# (option, default, type, choices) of every option that takes a value: argparse declares them from this table
# and quick_arguments reads them with it (a unit test checks that both read the same).
OPTIONS = (
    ("--job", None, int, None), ("--step", 0, int, None), ("--total-tasks", 1, int, None),
    ("--scope", "global", None, SCOPES), ("--runtime-path", "/run/pyenroot", None, None),
    ("--squashfuse", True, plugin_flag, None), ("--importer", None, None, None), ("--cwd", None, None, None),
    ("--batch-script", None, None, None), ("--image", None, None, None), ("--name", None, None, None),
    ("--mounts", None, None, None), ("--save", None, None, None), ("--env-names", (), _names, None),
    ("--unshare", (), _names, None), ("--mount-home", None, plugin_flag, None),
    ("--remap-root", None, plugin_flag, None), ("--entrypoint", False, plugin_flag, None),
    ("--writable", None, plugin_flag, None), ("--broadcast", None, None, None), ("--nodes", 0, int, None),
    ("--fanout", "auto", None, FANOUT_MODES), ("--fanout-shared", "", None, None),
)
HELP = {"--broadcast": "start: the image srun's fanout sent to this node", "--nodes": "fanout: the step's node count",
        "--fanout-shared": "fanout: directories every node shares, ':'-separated"}


def _attribute(option: str) -> str:
    return option[2:].replace("-", "_")


def add_arguments(parser) -> None:
    import argparse

    parser.add_argument("action", choices=ACTIONS)
    for option, default, kind, choices in OPTIONS:
        parser.add_argument(option, default=default, type=kind, choices=choices, required=option == "--job",
                            help=HELP.get(option))
    parser.add_argument("--incomplete", action="store_true", help=argparse.SUPPRESS)


def quick_arguments(words: list[str]):
    """The words after `spank` as argparse reads them, for what the plugin writes (ACTION, then `--option VALUE`
    pairs and `--incomplete`); None for anything else, which argparse then reads (and reports)."""
    from types import SimpleNamespace

    from pyenroot.quickargs import read_options

    if not words or words[0] not in ACTIONS:
        return None
    given: dict = {"verbose": 0}
    values = {option: _attribute(option) for option, _, _, _ in OPTIONS}
    if read_options(words, 1, {"--incomplete": "incomplete"}, values, frozenset(), given) != len(words):
        return None
    found: dict = {"debug": False, "verb": "spank", "action": words[0], "incomplete": False}
    found.update({_attribute(option): default for option, default, _, _ in OPTIONS})
    for option, _, kind, choices in OPTIONS:
        attribute = _attribute(option)
        if attribute not in given:
            continue
        try:
            value = kind(given[attribute]) if kind else given[attribute]
        except Exception:  # a value argparse refuses: it says why
            return None
        if choices and value not in choices:
            return None
        given[attribute] = value
    if "job" not in given:
        return None
    return SimpleNamespace(**(found | given))


def run(args, settings) -> int:
    from pyenroot.slurm import reporter, state, step

    report = reporter.result_reporter()
    if args.action == "epilog":
        return step.epilog(args.job, args.runtime_path, os.environ, report)
    request = state.StepRequest(
        job=args.job, step=args.step, total_tasks=args.total_tasks, scope=args.scope, runtime_path=args.runtime_path,
        squashfuse=args.squashfuse, importer=args.importer, cwd=args.cwd, batch_script=args.batch_script,
        image=args.image, name=args.name, mounts=args.mounts, save=args.save, env_names=args.env_names,
        unshare=args.unshare, mount_home=args.mount_home, remap_root=args.remap_root, entrypoint=args.entrypoint,
        writable=args.writable, broadcast=args.broadcast)
    if args.action == "fanout":
        from pyenroot.slurm import fanout

        fanout.send(request, settings, report, mode=args.fanout, nodes=args.nodes,
                    shared=fanout.shared_paths(args.fanout_shared))
        return 0
    if args.action == "cleanup":
        return step.cleanup_step(request, settings, report, incomplete=args.incomplete)
    try:
        return step.start_step(request, settings, report)
    except state.ReportedError:
        return 1
    except state.StepError as exc:
        report.error(exc.message)
        return 1
