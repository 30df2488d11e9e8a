"""What a container asks of the GPU hook, from its NVIDIA_* variables (pure: no files, no driver).

NVIDIA_VISIBLE_DEVICES picks GPUs, NVIDIA_DRIVER_CAPABILITIES the driver parts, NVIDIA_REQUIRE_* states
driver constraints. As in enroot's hook, a value in pyenroot's own environment (the host, the Slurm job)
beats the container's (image /etc/environment, environ.d, --env). Under Slurm only the job's GPUs may be used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pyenroot.errors import RuntimeStartError
from pyenroot.record import record

CAPABILITIES = ("compute", "compat32", "display", "graphics", "utility", "video")
DEFAULT_CAPABILITIES = frozenset({"utility", "compute"})
REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
REQUIRE_KEYS = ("cuda", "driver", "arch", "brand")
_CONSTRAINT = re.compile(r"^([a-z]+)(<=|>=|==|!=|<|>|=)(\S+)$")
_INDEX = re.compile(r"^\d+$")
_MIG_INDEX = re.compile(r"^\d+:\d+$")
_GPU_UUID = re.compile(r"^GPU-[0-9A-Fa-f-]+$")
_MIG_UUID = re.compile(r"^MIG-[0-9A-Za-z/-]+$")  # MIG-<uuid>, or the older MIG-GPU-<uuid>/<gi>/<ci>
_FALSE_WORDS = frozenset({"", "0", "n", "no", "false", "off"})


class GpuError(RuntimeStartError):
    """The GPU hook cannot give the container what it asks for."""

    reference = "gpu"


@record(frozen=True)
class Constraint:
    key: str  # cuda, driver, arch or brand
    operator: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.operator}{self.value}"


@record(frozen=True)
class Requirement:
    """One NVIDIA_REQUIRE_* variable: alternatives separated by spaces, each a comma-separated conjunction."""

    variable: str
    text: str
    alternatives: tuple[tuple[Constraint, ...], ...]


@record(frozen=True)
class GpuRequest:
    all_devices: bool  # NVIDIA_VISIBLE_DEVICES=all
    selectors: tuple[str, ...]  # indexes, GPU-/MIG- UUIDs, GPU:MIG pairs; empty with "none" (driver only)
    capabilities: frozenset[str]
    requirements: tuple[Requirement, ...]  # empty when NVIDIA_DISABLE_REQUIRE is set
    allocated: tuple[str, ...] | None  # the Slurm job's GPUs (minors or UUIDs); None outside a GPU job
    mig_config: bool = False  # NVIDIA_MIG_CONFIG_DEVICES: may reconfigure MIG (needs the config capability)
    mig_monitor: bool = False  # NVIDIA_MIG_MONITOR_DEVICES: may monitor every MIG instance

    @property
    def explicit(self) -> bool:
        """Named GPUs (not `all`/`none`): a missing driver is then an error, not a quiet no-op."""
        return bool(self.selectors)


def effective_environ(container: Mapping[str, str], host: Mapping[str, str]) -> dict[str, str]:
    """The NVIDIA_* variables the hook obeys: the host's non-empty value wins over the container's."""
    merged = {k: v for k, v in container.items() if k.startswith("NVIDIA_")}
    merged.update({k: v for k, v in host.items() if k.startswith("NVIDIA_") and v != ""})
    return merged


def parse_devices(value: str) -> tuple[bool, tuple[str, ...]] | None:
    """NVIDIA_VISIBLE_DEVICES -> (all?, selectors), or None when nothing is to be injected (unset/void)."""
    text = value.strip()
    if text in ("", "void"):
        return None
    if text == "none":
        return False, ()
    if text == "all":
        return True, ()
    selectors = tuple(token.strip() for token in text.split(",") if token.strip())
    for token in selectors:
        if token in ("all", "none", "void"):
            raise GpuError(f"invalid NVIDIA_VISIBLE_DEVICES: {token!r} cannot be combined with other entries")
        if not any(p.match(token) for p in (_INDEX, _MIG_INDEX, _GPU_UUID, _MIG_UUID)):
            raise GpuError(f"invalid NVIDIA_VISIBLE_DEVICES entry: {token!r}",
                           hint="use all, none, void, or a comma list of GPU indexes, GPU-/MIG- UUIDs or GPU:MIG")
    return False, selectors


def parse_capabilities(value: str | None) -> frozenset[str]:
    if value is None or not value.strip():
        return DEFAULT_CAPABILITIES
    names = {token.strip() for token in value.split(",") if token.strip()}
    if "all" in names:
        return frozenset(CAPABILITIES)
    unknown = sorted(names - set(CAPABILITIES))
    if unknown:
        raise GpuError(f"unknown NVIDIA_DRIVER_CAPABILITIES entry: {unknown[0]!r}",
                       hint=f"known capabilities: {', '.join(CAPABILITIES)}, all")
    return frozenset(names)


def parse_constraint(token: str, variable: str) -> Constraint:
    match = _CONSTRAINT.match(token)
    if not match:
        raise GpuError(f"invalid {variable} constraint: {token!r}",
                       hint="constraints look like cuda>=12.0 or brand=tesla,driver>=535")
    key, operator, value = match.groups()
    if key not in REQUIRE_KEYS:
        raise GpuError(f"invalid {variable} constraint {token!r}: unknown key {key!r}",
                       hint=f"known keys: {', '.join(REQUIRE_KEYS)}")
    return Constraint(key, "=" if operator == "==" else operator, value)


def parse_requirement(variable: str, text: str) -> Requirement:
    alternatives = tuple(
        tuple(parse_constraint(term, variable) for term in alternative.split(",") if term)
        for alternative in text.split()
    )
    return Requirement(variable, text.strip(), tuple(a for a in alternatives if a))


def slurm_allocation(host: Mapping[str, str]) -> tuple[str, ...] | None:
    """The GPUs Slurm gave this job or step, or None when not in a job that was given GPUs.

    SLURM_STEP_GPUS/SLURM_JOB_GPUS hold the node's GPU numbers as gres.conf lists them (/dev/nvidiaN);
    CUDA_VISIBLE_DEVICES is the fallback when Slurm set only that."""
    if not host.get("SLURM_JOB_ID"):
        return None
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = host.get(name)
        if value is not None and value.strip():
            return tuple(token.strip() for token in value.split(",") if token.strip())
    return None


def from_environ(container: Mapping[str, str], host: Mapping[str, str]) -> GpuRequest | None:
    """The container's GPU request, or None when it asks for nothing (NVIDIA_VISIBLE_DEVICES unset or void)."""
    env = effective_environ(container, host)
    devices = parse_devices(env.get("NVIDIA_VISIBLE_DEVICES", ""))
    if devices is None:
        return None
    all_devices, selectors = devices
    capabilities = parse_capabilities(env.get("NVIDIA_DRIVER_CAPABILITIES"))
    requirements: tuple[Requirement, ...] = ()
    if env.get("NVIDIA_DISABLE_REQUIRE", "").strip().lower() in _FALSE_WORDS:
        requirements = tuple(parse_requirement(name, env[name]) for name in sorted(env)
                             if name.startswith(REQUIRE_PREFIX) and env[name].strip())
    return GpuRequest(all_devices, selectors, capabilities, requirements, slurm_allocation(host),
                      mig_config=_asked(env.get("NVIDIA_MIG_CONFIG_DEVICES")),
                      mig_monitor=_asked(env.get("NVIDIA_MIG_MONITOR_DEVICES")))


def _asked(value: str | None) -> bool:
    return value is not None and value.strip() not in ("", "void", "none")


# --- checking requirements against what the driver offers -------------------------------------------------


def version_key(text: str) -> tuple[int, ...]:
    """Numeric dotted version ('535.104.05' -> (535, 104, 5)); non-numeric parts count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.\-]", text.strip()))


def _compare(actual: str, operator: str, wanted: str, numeric: bool) -> bool:
    if numeric:
        left, right = version_key(actual), version_key(wanted)
        width = max(len(left), len(right))
        left, right = left + (0,) * (width - len(left)), right + (0,) * (width - len(right))
    else:
        left, right = actual.lower(), wanted.lower()  # type: ignore[assignment]
        if operator not in ("=", "!="):
            return False
    return {
        "=": left == right, "!=": left != right, "<": left < right,
        "<=": left <= right, ">": left > right, ">=": left >= right,
    }[operator]


@record(frozen=True)
class Facts:
    """What constraints are checked against. Per-GPU facts (brand, arch) hold for every selected GPU."""

    cuda: str | None
    driver: str | None
    brands: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()


def constraint_holds(constraint: Constraint, facts: Facts) -> bool:
    """Unknown facts never satisfy a constraint: a requirement that cannot be checked is not met."""
    if constraint.key in ("cuda", "driver"):
        actual = facts.cuda if constraint.key == "cuda" else facts.driver
        return actual is not None and _compare(actual, constraint.operator, constraint.value, numeric=True)
    values = facts.brands if constraint.key == "brand" else facts.archs
    numeric = constraint.key == "arch"
    return bool(values) and all(_compare(v, constraint.operator, constraint.value, numeric) for v in values)


def requirement_holds(requirement: Requirement, facts: Facts) -> bool:
    return any(all(constraint_holds(c, facts) for c in alternative) for alternative in requirement.alternatives)


def unmet_requirements(requirements: tuple[Requirement, ...], facts: Facts) -> list[Requirement]:
    return [r for r in requirements if r.alternatives and not requirement_holds(r, facts)]


def needed_facts(requirements: tuple[Requirement, ...]) -> frozenset[str]:
    """Which keys the requirements mention (so discovery runs nvidia-smi only when it must)."""
    return frozenset(c.key for r in requirements for a in r.alternatives for c in a)
