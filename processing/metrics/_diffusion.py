"""Tortuosity factor: steady-state diffusion through a phase, as TauFactor computes it.

The phase conducts (diffusivity 1), everything else is insulating; the potential is 0
on the start face and 1 on the end face of the transport axis (planes half a voxel
before the first and after the last voxel centre), no flux through the other faces.
The finite-volume Laplace equation (7-point stencil, bond conductance ``A / d`` between
face neighbours, ``2 A / d`` to a face) is solved by conjugate gradients with a Jacobi
preconditioner on the part of the phase that connects both faces (the rest carries no
flux). Then

    D_eff / D = F L / (A dV),        tau = eps D / D_eff

with ``F`` the flux through the volume, ``L`` the straight length, ``A`` the face area,
``eps`` the phase's volume fraction (all of it, percolating or not). This is TauFactor's
definition (Cooper et al. 2016, ``taufactor.Solver``): a straight channel has tau = 1,
``n`` layers in series of conductances ``c_i`` give ``tau = eps * mean(1 / c_i)``.

Valid region: unassigned voxels (label 0) are outside the domain, here insulating; the
faces are the first and last valid voxel of every line (as for the geometric
tortuosity), ``L`` the mean length of the valid lines and ``A`` their share of the face.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numba
import numpy as np

from ._common import check_axis, check_mask, check_spacing
from ._network import percolating_mask, transport_lines

__all__ = ["TortuosityFactorResult", "tortuosity_factor"]


@dataclass(frozen=True)
class TortuosityFactorResult:
    """Tortuosity factor of a phase along an axis.

    Attributes
    ----------
    tau : float or None
        Tortuosity factor ``eps D / D_eff``; None when no path connects the two faces.
    effective_diffusivity : float
        ``D_eff / D`` (0 when nothing percolates).
    volume_fraction : float
        ``eps``: the phase's share of the valid voxels.
    iterations : int
        Conjugate-gradient iterations.
    relative_residual : float
        Final ``|b - A x| / |b|``.
    flux_mismatch : float or None
        Relative difference between the flux leaving the start face and the flux
        entering the end face: the solution's own error bar (small when converged).
    converged : bool
        The residual reached the tolerance within the iteration limit.
    """

    tau: float | None
    effective_diffusivity: float
    volume_fraction: float
    iterations: int
    relative_residual: float
    flux_mismatch: float | None
    converged: bool

    def as_dict(self):
        return {"tau": self.tau, "effective_diffusivity": self.effective_diffusivity,
                "volume_fraction": self.volume_fraction, "iterations": self.iterations,
                "relative_residual": self.relative_residual, "flux_mismatch": self.flux_mismatch,
                "converged": self.converged}


@numba.njit(cache=True)
def _system(idx, coords, first, last, g):
    """Neighbour indices (-1: none), diagonal, right-hand side and face conductances."""
    n = coords.shape[0]
    nz, ny, nx = idx.shape
    nb = np.full((n, 6), -1, np.int32)
    diag = np.zeros(n)
    rhs = np.zeros(n)
    g_start = np.zeros(n)
    g_end = np.zeros(n)
    for i in range(n):
        z, y, x = coords[i, 0], coords[i, 1], coords[i, 2]
        k = 0
        for a in range(3):
            for s in (-1, 1):
                zz, yy, xx = z, y, x
                if a == 0:
                    zz += s
                elif a == 1:
                    yy += s
                else:
                    xx += s
                if 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx:
                    j = idx[zz, yy, xx]
                    if j >= 0:
                        nb[i, k] = j
                        diag[i] += g[a]
                k += 1
        # transport axis is 0: faces half a voxel before first / after last valid voxel
        if z == first[y, x]:
            g_start[i] = 2 * g[0]
        if z == last[y, x]:
            g_end[i] = 2 * g[0]
        diag[i] += g_start[i] + g_end[i]
        rhs[i] = g_end[i]
    return nb, diag, rhs, g_start, g_end


@numba.njit(cache=True, parallel=True)
def _matvec(nb, diag, gax, v, out):
    n = v.shape[0]
    for i in numba.prange(n):
        acc = diag[i] * v[i]
        for k in range(6):
            j = nb[i, k]
            if j >= 0:
                acc -= gax[k // 2] * v[j]
        out[i] = acc


@numba.njit(cache=True, parallel=True)
def _dot(a, b):
    acc = 0.0
    for i in numba.prange(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@numba.njit(cache=True)
def _pcg(nb, diag, gax, rhs, x, tol, max_iter):
    n = x.shape[0]
    r = np.empty(n)
    _matvec(nb, diag, gax, x, r)
    for i in range(n):
        r[i] = rhs[i] - r[i]
    z = r / diag
    p = z.copy()
    q = np.empty(n)
    rz = _dot(r, z)
    b_norm = math.sqrt(_dot(rhs, rhs))
    res = math.sqrt(_dot(r, r)) / b_norm
    it = 0
    while it < max_iter and res > tol:
        _matvec(nb, diag, gax, p, q)
        alpha = rz / _dot(p, q)
        for i in range(n):
            x[i] += alpha * p[i]
            r[i] -= alpha * q[i]
            z[i] = r[i] / diag[i]
        rz_new = _dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        for i in range(n):
            p[i] = z[i] + beta * p[i]
        res = math.sqrt(_dot(r, r)) / b_norm
        it += 1
    return it, res


def tortuosity_factor(mask, *, spacing_um=(1.0, 1.0, 1.0), axis=1, valid=None, tol=1e-6, max_iter=20_000,
                      threads=None):
    """Tortuosity factor of a phase along `axis` (steady diffusion, TauFactor's definition).

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The conducting phase.
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um (anisotropic voxels: bond conductances follow).
    axis : int
        Transport axis: 0 (z), 1 (y, default) or 2 (x).
    valid : (Z, Y, X) ndarray of bool, optional
        Assigned voxels (default all), see the module notes.
    tol : float
        Relative residual at which the conjugate gradients stop.
    max_iter : int
        Iteration limit (``converged`` is False when it is reached).
    threads : int, optional
        Numba threads (default CPU count).

    Returns
    -------
    TortuosityFactorResult
        Memory: about 100 bytes per percolating phase voxel plus 5 bytes per voxel.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing_um)
    axis = check_axis(axis, name="axis")
    if not (0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    if valid is None:
        valid = np.ones(mask.shape, bool)
    else:
        valid = check_mask(valid, name="valid")
        if valid.shape != mask.shape:
            raise ValueError(f"valid must have the shape of the mask {mask.shape}, got {valid.shape}")
    mask = mask & valid
    n_valid = int(np.count_nonzero(valid))
    eps = float(np.count_nonzero(mask) / n_valid) if n_valid else 0.0
    through = percolating_mask(mask, axis=axis, valid=valid)
    # transport axis first
    order = [axis] + [a for a in range(3) if a != axis]
    through = np.ascontiguousarray(np.transpose(through, order))
    valid_t = np.transpose(valid, order)
    sp = np.array([spacing[a] for a in order])
    first, last, has = transport_lines(valid_t, 0)
    del valid_t
    n_lines = int(np.count_nonzero(has))
    coords = np.argwhere(through).astype(np.int32)
    if coords.shape[0] == 0 or n_lines == 0:
        return TortuosityFactorResult(None, 0.0, eps, 0, 0.0, None, True)
    idx = np.full(through.shape, -1, np.int32)
    idx[tuple(coords.T)] = np.arange(coords.shape[0], dtype=np.int32)
    del through
    area = np.array([sp[1] * sp[2], sp[0] * sp[2], sp[0] * sp[1]])
    g = area / sp
    nb, diag, rhs, g_start, g_end = _system(idx, coords, first.astype(np.int32), last.astype(np.int32), g)
    del idx
    # initial guess: the potential of a straight line
    lengths = (last - first + 1).astype(float)
    z, y, x = coords[:, 0], coords[:, 1], coords[:, 2]
    potential = (z - first[y, x] + 0.5) / lengths[y, x]
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)))
    try:
        iterations, residual = _pcg(nb, diag, g, rhs, potential, float(tol), int(max_iter))
    finally:
        numba.set_num_threads(previous)
    flux_in = float(np.sum(g_start * potential))
    flux_out = float(np.sum(g_end * (1.0 - potential)))
    flux = 0.5 * (flux_in + flux_out)
    straight = float(np.mean(lengths[has])) * sp[0]
    face_area = n_lines * area[0]
    d_rel = flux * straight / face_area
    mismatch = abs(flux_in - flux_out) / flux if flux > 0 else None
    tau = float(eps / d_rel) if d_rel > 0 else None
    return TortuosityFactorResult(tau, float(d_rel), eps, int(iterations), float(residual), mismatch,
                                  bool(residual <= tol))
