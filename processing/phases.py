"""Phase naming: which label is which phase, and which phase plays which role.

Phase ``i`` of the configured list (dark to bright) is label ``i + 1``; label 0
means *unassigned* (outside the field of view after drift correction, or a pixel
the segmentation refused to call).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["UNASSIGNED", "DEFAULT_PHASE_NAMES", "Phases"]

UNASSIGNED = 0
DEFAULT_PHASE_NAMES = ("pore", "electrolyte", "active")
_ROLES = ("pore", "electrolyte", "active")


@dataclass(frozen=True)
class Phases:
    """The phases of a sample and the role each one plays in the Table 1 metrics.

    Parameters
    ----------
    names : tuple of str
        Phase names from darkest to brightest; ``names[i]`` is label ``i + 1``.
        Two to four phases.
    roles : dict of str to str, optional
        Maps the roles ``"pore"``, ``"electrolyte"`` and ``"active"`` to phase
        names. By default a phase whose name is a role plays that role.

    Examples
    --------
    >>> p = Phases()
    >>> p.label("active")
    3
    >>> p.label_of_role("pore")
    1
    """

    names: tuple[str, ...] = DEFAULT_PHASE_NAMES
    roles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not 2 <= len(names) <= 4:
            raise ValueError(f"phases: expected 2 to 4 phase names, got {len(names)}: {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique, got {names!r}")
        if "unassigned" in names:
            raise ValueError("phases: 'unassigned' is reserved for label 0")
        roles = {r: r for r in _ROLES if r in names}
        roles.update(self.roles)
        for role, name in roles.items():
            if role not in _ROLES:
                raise ValueError(f"phases: unknown role {role!r}, expected one of {_ROLES}")
            if name not in names:
                raise ValueError(f"phases: role {role!r} names phase {name!r}, which is not in {names!r}")
        object.__setattr__(self, "roles", roles)

    @property
    def labels(self) -> dict[str, int]:
        """Phase name to label value."""
        return {name: i + 1 for i, name in enumerate(self.names)}

    def label(self, name: str) -> int:
        """Label value of the phase called `name`."""
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise KeyError(f"unknown phase {name!r}; phases are {self.names!r}") from None

    def label_of_role(self, role: str) -> int | None:
        """Label of the phase playing `role`, or None when no phase plays it."""
        name = self.roles.get(role)
        return None if name is None else self.label(name)
