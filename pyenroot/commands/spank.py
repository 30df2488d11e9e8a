"""`pyenroot spank start|cleanup|epilog|fanout ...`: internal, run by the SPANK plugin as the job user.

`start` prepares the step's container and becomes its stopped anchor process; `cleanup` runs at step end,
`epilog` at job end; `fanout` runs in srun before the launch (pyenroot/slurm/fanout.py). Results for the
plugin go to fd 3 (see pyenroot/slurm/reporter.py).
"""

from __future__ import annotations

import argparse
import os


def plugin_flag(value: str) -> bool:
    """A boolean argument from the plugin, which writes exactly "y" or "n" (argv_push_bool in
    spank_plugin/common.c, after its own parse_bool of the user's words); anything else is a usage error."""
    if value not in ("y", "n"):
        raise argparse.ArgumentTypeError(f"expected y or n, not {value!r}")
    return value == "y"


def _names(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in value.split(",") if v))


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("start", "cleanup", "epilog", "fanout"))
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--step", type=int, default=0)
    parser.add_argument("--total-tasks", type=int, default=1)
    parser.add_argument("--scope", choices=("job", "global"), default="global")
    parser.add_argument("--runtime-path", default="/run/pyenroot")
    parser.add_argument("--squashfuse", type=plugin_flag, default=True)
    parser.add_argument("--importer")
    parser.add_argument("--cwd")
    parser.add_argument("--batch-script")
    parser.add_argument("--image")
    parser.add_argument("--name")
    parser.add_argument("--mounts")
    parser.add_argument("--save")
    parser.add_argument("--env-names", type=_names, default=())
    parser.add_argument("--unshare", type=_names, default=())
    parser.add_argument("--mount-home", type=plugin_flag)
    parser.add_argument("--remap-root", type=plugin_flag)
    parser.add_argument("--entrypoint", type=plugin_flag, default=False)
    parser.add_argument("--writable", type=plugin_flag)
    parser.add_argument("--incomplete", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--broadcast", help="start: the image srun's fanout sent to this node")
    parser.add_argument("--nodes", type=int, default=0, help="fanout: the step's node count")
    parser.add_argument("--fanout", choices=("auto", "sbcast", "off"), default="auto")
    parser.add_argument("--fanout-shared", default="", help="fanout: directories every node shares, ':'-separated")


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
