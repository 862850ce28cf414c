"""MoCHi: hard negative mixing (Kalantidis et al. 2020, arXiv:2010.01028).

For every query ``q`` (unit norm) with candidate negatives ``n_1 .. n_K``:

1. ``Q~^N``: the ``N`` hardest candidates, by ``q . n`` (ties:
   :func:`negatives.ranking.top_k`'s deterministic order);
2. ``s`` synthetic negatives mixed from *pairs* of them::

       h_k = normalize(alpha_k n_i + (1 - alpha_k) n_j),   alpha_k ~ U[0, 1),
       (i, j) drawn uniformly from Q~^N x Q~^N (with replacement);

3. ``s'`` synthetic negatives mixed from the *query* and one of them::

       h'_k = normalize(beta_k q + (1 - beta_k) n_j),      beta_k ~ U[0, 0.5),

   so the query's weight is strictly below one half and ``h'_k`` stays closer
   to ``n_j`` than to ``q``;
4. all ``s + s'`` are detached constants: the loss adds ``q . h`` to the
   query's logits (gradient ``h`` to the query only), every real negative is
   kept, and nothing synthetic enters the queue.

Closed form.  The loss needs only the cosines ``q . h``, and they follow from
cosines already at hand, so no mixed embedding is built.  With ``q``, ``n_i``,
``n_j`` unit norm and ``sim_i = q . n_i`` a column of ``sim``, the dot product
distributes over the sum and the norm expands::

    q . h_k  = (alpha sim_i + (1 - alpha) sim_j) / r,
         r   = |alpha n_i + (1 - alpha) n_j| = sqrt(alpha^2 + (1 - alpha)^2 + 2 alpha (1 - alpha) n_i . n_j),
    q . h'_k = (beta (q . q) + (1 - beta) sim_j) / r',
         r'  = |beta q + (1 - beta) n_j|     = sqrt(beta^2 + (1 - beta)^2 + 2 beta (1 - beta) sim_j),

exact up to rounding, not an approximation.  Only the pair products
``n_i . n_j [B, s]`` need the parents' embeddings; :class:`MoCHi` returns the
coefficients as ``Selection(mix=Mix(i, j, a, c, d))`` ``[B, s + s']`` and the
loss evaluates them with :meth:`Mix.logits <negatives.policies.base.Mix.logits>`.

The gradient is the explicit form's too.  There ``h`` is a detached constant,
so ``d(q . h)/dq = h``.  Here ``alpha``, ``beta``, ``r``, ``r'`` are detached
constants, ``sim_i`` has gradient ``n_i`` to ``q`` (``sim = q @ keys.T`` with
the keys detached; SimCLR, whose candidates do get gradient, passes such
cosines separately), and ``q . q`` is computed as ``q . q.detach()``, whose
gradient is ``q``: so the gradient is ``(alpha n_i + (1 - alpha) n_j) / r = h``
and ``(beta q + (1 - beta) n_j) / r' = h'``.  The explicit form stays as the
reference: :func:`hardest`, :func:`mix_pairs`, :func:`mix_with_query`, and
:meth:`MoCHi.embeddings`, which materialises the last draw's ``h``.

Mixing starts after a warm-up of ``w`` epochs (the policy is told the run
length by :meth:`MoCHi.start`; ``progress`` is the fraction of training done).

Randomness.  The draws (pairs, ``alpha``, ``beta``) come from
``generator`` when one is given, otherwise from PyTorch's global generator
on the device of ``sim``.  The trainer reseeds the global generator at every
epoch from ``(seed, epoch)``, so the default is deterministic *and*
resumable from an epoch checkpoint without saving any policy state; a policy
that holds its own generator would need it in the checkpoint to resume
exactly.  Across processes the draws are made for every query of the step
and each process keeps its rows (``Candidates.query_rows``), so the mixes
are those of the run in one process.

Policy string: ``mochi[N,s,s']`` or ``mochi[N,s,s',w]`` (``w`` warm-up
epochs, default 0; written only when non-zero).  The paper's ImageNet setting
is ``mochi[1024,512,256]`` (or ``mochi[1024,1024,256]``).  Applies to MoCo
(the candidates are the queue) and to SimCLR (the other 2B-2 views): the
positions index ``sim``'s columns and the parents are read through
:func:`candidate_embeddings`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ranking import top_k
from ..runtime.transfer import to_device_async
from .base import Mix, NegativePolicy, Selection
from .candidates import Candidates
from .grammar import SEP, PolicyError, fields, fmt_number, match_form, numbers

__all__ = ["MoCHi", "hardest", "candidate_embeddings", "pair_dots", "mix_pairs", "mix_with_query", "parse", "GRAMMAR"]

GRAMMAR = (
    "'mochi[N,s,s']' or 'mochi[N,s,s',w]': per query, s negatives mixed from pairs of its N hardest "
    "and s' mixed from the query and one of them, after w warm-up epochs (integers, N >= 1, "
    "s + s' >= 1, s <= N*N, w >= 0)"
)

#: a tolerance on ``progress * epochs``: progress is step / total_steps, so
#: the first step of epoch e sits at e (up to rounding)
_EPS = 1e-9


def _uniform(shape: tuple[int, ...], device, generator: torch.Generator | None) -> Tensor:
    """``U[0, 1)`` draws of ``shape`` on ``device`` from ``generator`` (None: global);
    a generator of another device (the CPU) draws there and the draws are sent
    without a blocking copy."""
    if generator is None:
        return torch.rand(shape, device=device)
    return to_device_async(torch.rand(shape, generator=generator, device=generator.device), device)


def _randint(high: int, shape: tuple[int, ...], device, generator: torch.Generator | None) -> Tensor:
    """Uniform integers in ``[0, high)`` of ``shape`` on ``device`` (the generator as in :func:`_uniform`)."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    return to_device_async(torch.randint(high, shape, generator=generator, device=generator.device), device)


def hardest(sim: Tensor, n: int) -> Tensor:
    """Positions of each query's ``n`` hardest candidates.

    Positions of each query's ``n`` hardest candidates: ``sim [B, K] -> [B, n]``
    (in no particular order: the mixes draw positions uniformly)."""
    return top_k(sim, n)


def candidate_embeddings(candidates: Candidates, index: Tensor) -> Tensor:
    """Embeddings of the candidates ``index [B, n]`` of each query: ``[B, n, D]``."""
    if candidates.keys is None:
        raise PolicyError("this policy needs the negatives' embeddings, which this step does not have")
    keys = candidates.keys
    rows = index if candidates.pool_index is None else candidates.pool_index.gather(1, index)
    if rows.device.type != "cpu":
        return keys[rows]
    # index_select on flattened rows: several times faster on CPU than keys[rows]
    return keys.index_select(0, rows.reshape(-1)).view(*rows.shape, keys.shape[1])


def pair_dots(candidates: Candidates, pi: Tensor, pj: Tensor) -> Tensor:
    """Dot products of pairs of each query's candidates.

    ``n_i . n_j`` of each query's candidates at positions ``pi, pj [B, s]``
    -> ``[B, s]``: the only embeddings the closed form reads.  On CPU the
    ``[B, s, D]`` parents are gathered a block of queries (about 0.5 MB) at a
    time: one gather of all of them costs several times more there."""
    b, s = pi.shape
    rows = b
    if pi.device.type == "cpu" and candidates.keys is not None:
        rows = max(1, (1 << 17) // max(1, s * candidates.keys.shape[1]))
    # the product in place, into the first gathered block (fresh memory)
    blocks = [
        candidate_embeddings(candidates, pi[r : r + rows])
        .mul_(candidate_embeddings(candidates, pj[r : r + rows]))
        .sum(2)
        for r in range(0, b, rows)
    ]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def mix_pairs(n_i: Tensor, n_j: Tensor, alpha: Tensor) -> Tensor:
    """MoCHi's mixes of two hard negatives, normalised.

    ``normalize(alpha n_i + (1 - alpha) n_j)``: ``[B, s, D]`` parents and
    ``alpha [B, s]`` in ``[0, 1]`` -> ``[B, s, D]``, unit norm."""
    return F.normalize(torch.lerp(n_j, n_i, alpha.unsqueeze(2).to(n_i.dtype)), dim=2)


def mix_with_query(query: Tensor, n_j: Tensor, beta: Tensor) -> Tensor:
    """MoCHi's mixes of the query with a hard negative, normalised.

    ``normalize(beta q + (1 - beta) n_j)``: ``query [B, D]``, ``n_j [B, s', D]``,
    ``beta [B, s']`` in ``[0, 0.5)`` -> ``[B, s', D]``, unit norm."""
    q = query.unsqueeze(1).to(n_j.dtype).expand_as(n_j)
    return F.normalize(torch.lerp(n_j, q, beta.unsqueeze(2).to(n_j.dtype)), dim=2)


class MoCHi(NegativePolicy):
    """Hard negative mixing: synthetic negatives from the hardest (Kalantidis et al. 2020, arXiv:2010.01028).

    ``mochi[N,s,s',w]``: every negative, plus ``s + s'`` synthetic hard
    negatives per query once ``w`` epochs are done (see the module docstring).

    Args:
        n_hard: N, the hardest negatives mixed.
        s: mixes of two of them per query.
        s_query: s', mixes of the query and one of them per query.
        warmup: w, epochs before mixing starts.
        generator: for the draws (None: torch's global generator).

    Called with ``sim [B, K]``, it answers ``Selection(mix=Mix [B, s + s'])``:
    the synthetic negatives' cosines in closed form, pair mixes first.
    ``last_mix`` keeps the last draw (``hard [B, N]`` the positions of the N
    hardest; ``i, j, alpha`` for the pairs and ``jq, beta`` for the query
    mixes, positions into ``hard``); :meth:`embeddings` materialises it.

    >>> from negatives.policies.candidates import Candidates
    >>> keys = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    >>> q = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    >>> mix = MoCHi(3, 2, 1)(q @ keys.T, Candidates(keys=keys, queries=q)).mix
    >>> mix.logits(q, q @ keys.T).shape                       # [B, s + s']
    torch.Size([2, 3])
    """

    def __init__(self, n_hard: int, s: int, s_query: int, warmup: int = 0, generator: torch.Generator | None = None):
        for label, v in (("N", n_hard), ("s", s), ("s'", s_query), ("w", warmup)):
            if int(v) != v or v < 0:
                raise PolicyError(f"mochi: {label} must be a whole number >= 0, got {v!r}; allowed: {GRAMMAR}")
        self.n_hard, self.s, self.s_query, self.warmup = int(n_hard), int(s), int(s_query), int(warmup)
        parts = [self.n_hard, self.s, self.s_query] + ([self.warmup] if self.warmup else [])
        self.name = "mochi[" + SEP.join(str(p) for p in parts) + "]"
        if self.n_hard < 1:
            raise PolicyError(f"policy {self.name!r}: N must be at least 1; allowed: {GRAMMAR}")
        if self.s + self.s_query == 0:
            raise PolicyError(
                f"policy {self.name!r}: s = s' = 0 mixes nothing (that is the policy 'all'); allowed: {GRAMMAR}"
            )
        if self.s > self.n_hard * self.n_hard:
            raise PolicyError(
                f"policy {self.name!r}: s = {self.s} synthetic negatives from pairs of the "
                f"N = {self.n_hard} hardest, but there are only N*N = {self.n_hard * self.n_hard} "
                f"pairs; allowed: {GRAMMAR}"
            )
        self.generator = generator
        self.epochs: int | None = None
        self.last_mix: dict[str, Tensor] = {}

    # -- the interface ------------------------------------------------------

    def start(self, epochs: int, num_candidates: int) -> None:
        self.epochs = int(epochs)

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        if self.n_hard > num_candidates:
            raise PolicyError(
                f"policy {self.name!r}: N = {self.n_hard} hardest negatives out of only "
                f"{num_candidates} candidates; allowed: N <= {num_candidates}"
            )
        if epochs is not None and self.warmup >= epochs:
            raise PolicyError(
                f"policy {self.name!r}: a warm-up of {self.warmup} epochs leaves no mixing in a run "
                f"of {epochs} epochs; allowed: w < {epochs}"
            )

    def mixing(self, progress: float) -> bool:
        """True once the warm-up is over: ``progress * epochs >= w``."""
        if self.warmup == 0:
            return True
        if self.epochs is None:
            raise PolicyError(f"policy {self.name!r} has a warm-up in epochs: call start(epochs, K) before training")
        return progress * self.epochs >= self.warmup - _EPS

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        if not self.mixing(progress):
            return Selection()
        b, k = sim.shape
        if self.n_hard > k:
            raise PolicyError(f"policy {self.name!r}: N = {self.n_hard} hardest out of only {k} candidates")
        with torch.no_grad():
            hard = hardest(sim, self.n_hard)  # [B, N] positions
            dev, g = sim.device, self.generator
            # drawn for every query of the step, this process's rows kept (candidates.query_rows)
            first, total = candidates.query_rows or (0, b)
            mine = slice(first, first + b)
            i = _randint(self.n_hard, (total, self.s), dev, g)[mine]
            j = _randint(self.n_hard, (total, self.s), dev, g)[mine]
            alpha = _uniform((total, self.s), dev, g)[mine]
            jq = _randint(self.n_hard, (total, self.s_query), dev, g)[mine]
            beta = 0.5 * _uniform((total, self.s_query), dev, g)[mine]  # [0, 0.5)
            # the parents' positions in sim, laid out as the Mix reads them
            # (i then j; the query mixes' j twice): one gather, no copies later
            n_mix, s = self.s + self.s_query, self.s
            ij = hard.gather(1, torch.cat([i, jq, j, jq], 1))  # [B, 2(s + s')]
            pi, pq, pj = ij[:, :s], ij[:, s:n_mix], ij[:, n_mix : n_mix + s]
            dot = pair_dots(candidates, pi, pj)  # n_i . n_j  [B, s]
            # both kinds at once, elementwise: the pairs' weights x = alpha with
            # their parents' cosine, then the query mixes' y = beta with q . n_j
            x = torch.cat([alpha, beta], 1).to(dot.dtype)  # [B, s + s']
            cos = torch.cat([dot, sim.gather(1, pq).to(dot.dtype)], 1)  # [B, s + s']
            u = 1 - x
            r = (x * x + u**2 + 2 * x * u * cos).sqrt()  # |x n_i + (1-x) n_j|, then |y q + (1-y) n_j|
            xr = x / r
            mix = Mix(
                i=ij[:, :n_mix],
                j=ij[:, n_mix:],
                a=F.pad(xr[:, :s], (0, self.s_query)),
                c=u / r,
                d=F.pad(xr[:, s:], (s, 0)),
            )
        self.last_mix = {"hard": hard, "i": i, "j": j, "alpha": alpha, "jq": jq, "beta": beta}
        return Selection(mix=mix)

    def embeddings(self, candidates: Candidates) -> Tensor:
        """The last draw's synthetic negatives, materialised by the explicit
        form (for tests and inspection): ``[B, s + s', D]``, pair mixes first,
        unit norm, detached, in the keys' dtype.  ``candidates``: those of
        that call, with the queries.  Their cosines to the queries are what
        that call's :class:`Mix` gives."""
        if not self.last_mix:
            raise PolicyError(f"policy {self.name!r}: no mix drawn yet")
        if candidates.queries is None:
            raise PolicyError(f"policy {self.name!r} needs the query embeddings, which this step does not have")
        m = self.last_mix
        parent = lambda pos: candidate_embeddings(candidates, m["hard"].gather(1, pos))  # noqa: E731  [B, s, D]
        with torch.no_grad():
            return torch.cat(
                [
                    mix_pairs(parent(m["i"]), parent(m["j"]), m["alpha"]),
                    mix_with_query(candidates.queries, parent(m["jq"]), m["beta"]),
                ],
                dim=1,
            )


#: the form; the numbers are read by the shared number reader (:mod:`.grammar`)
_RE = re.compile(r"^mochi\[([^\[\]]*)\]$")


def _whole(v: float, label: str, text: str) -> int:
    if v != int(v) or v < 0:
        raise PolicyError(
            f"policy {text!r}: {label} must be a whole number >= 0, got {fmt_number(v)}; allowed: {GRAMMAR}"
        )
    return int(v)


def parse(text: str) -> MoCHi | None:
    """Parse ``mochi[...]``; None for any other form.

    ``mochi[N,s,s']`` / ``mochi[N,s,s',w]`` -> :class:`MoCHi`; None when
    ``text`` is not a mochi policy; :class:`PolicyError` when it is one but
    malformed.

    >>> parse("mochi[1024, 512, 256]").name
    'mochi[1024_512_256]'
    >>> parse("mochi[64,32,16,0]").name
    'mochi[64_32_16]'
    >>> parse("mochi[1e3_5E2_2.5e2]").name
    'mochi[1000_500_250]'
    """
    m = match_form(text, "mochi", _RE, GRAMMAR)
    if m is None:
        return None
    n, s, sq, *w = numbers(fields(m.group(1)), text, "mochi policy", GRAMMAR, counts=(3, 4))
    return MoCHi(
        _whole(n, "N", text), _whole(s, "s", text), _whole(sq, "s'", text), _whole(w[0], "w", text) if w else 0
    )
