"""lme4's criteria in numpy/scipy: the profiled (RE)ML deviance of a linear mixed model and the Laplace
deviance of a binomial GLMM (what `lmer` and `glmer(nAGQ = 1)` optimise), for any random-effects
structure the formula module builds (crossed, nested, correlated slopes, `||`).

The notation is that of Bates et al. (2015, J. Stat. Softw. 67(1)): random effects b = Λθ u with
u ~ N(0, σ²I); Λθ is block diagonal, one lower-triangular k×k block per level of each term; θ holds the
blocks' lower triangles, with the diagonal bounded below by 0.

- Gaussian: for a given θ, β and u solve the penalised least-squares problem exactly (sparse Cholesky-
  like factor of Λ'Z'ZΛ + I via SuperLU, or dense Cholesky when it is small); the deviance is profiled
  over β and σ, so only θ is optimised.
- Binomial (logit): for given (θ, β), penalised IRLS finds the conditional mode of u; the Laplace
  deviance is −2 log p(y | u) + ‖u‖² + log|Λ'Z'WZΛ + I|. As glmer does, a first stage optimises θ with β
  inside PIRLS, and a second optimises (θ, β) together on the Laplace deviance. Standard errors come from
  the inverse Hessian of that deviance over (θ, β) (glmer's default, `use.hessian = TRUE`).

Every fit runs two optimizers (L-BFGS-B and bounded Nelder–Mead) and keeps the best criterion, restarts
any variance found at zero from inside (zero is a stationary point where both stop), then
checks the gradient and Hessian at the optimum (lme4's checks, the same tolerances) and flags boundary
(singular) fits. Any failed check makes `converged` false, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy import linalg, optimize
from scipy.sparse.linalg import splu
from scipy.special import expit, gammaln
from threadpoolctl import threadpool_limits

from animacy.analysis.formula import Design

DENSE_MAX = 1500  # at most this many random effects are factored densely (and only where the matrix is not sparse)
SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on the diagonal of θ
GRAD_TOL = 2e-3  # lme4's check.conv.grad tolerance (on the Hessian-scaled gradient)


@dataclass
class EngineFit:
    """Estimates on the design's (rescaled) variables."""

    beta: np.ndarray
    vcov: np.ndarray
    theta: np.ndarray
    sigma2: float  # residual variance (1 for binomial)
    covariances: list[np.ndarray]  # per random term, k×k (in units of the response)
    modes: list[np.ndarray]  # per random term, levels × k conditional modes b
    criterion: float  # -2 log-likelihood (REML criterion for a REML fit)
    optimizer: str
    converged: bool
    messages: list[str] = field(default_factory=list)
    tried: dict[str, float] = field(default_factory=dict)


def _lower_triangle(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a k×k lower triangle, column by column (lme4's order of θ)."""
    pairs = [(i, j) for j in range(k) for i in range(j, k)]
    return np.array([p[0] for p in pairs], dtype=int), np.array([p[1] for p in pairs], dtype=int)


class _Structure:
    """Z (as a sparse matrix, and as the column and value of each row's nonzeros), and Λθ's sparsity
    pattern with where each θ goes."""

    def __init__(self, d: Design):
        cols, rows_l, cols_l, tidx, lower = [], [], [], [], []
        self.terms = []  # (offset, levels, k, first theta index)
        off, t0 = 0, 0
        for Xr, codes, lev in zip(d.random_X, d.codes, d.levels):
            L, k = len(lev), Xr.shape[1]
            cols.append(off + codes[:, None] * k + np.arange(k)[None, :])
            tri = list(zip(*_lower_triangle(k)))
            for p, (i, j) in enumerate(tri):
                rows_l.append(off + np.arange(L) * k + i)
                cols_l.append(off + np.arange(L) * k + j)
                tidx.append(np.full(L, t0 + p))
                lower.append(0.0 if i == j else -np.inf)
            self.terms.append((off, L, k, t0))
            off += L * k
            t0 += len(tri)
        self.q = off
        # every row has one nonzero per column of each random term: Z as (column, value) per row
        self.cols, self.vals = np.hstack(cols), np.hstack(d.random_X)
        n, K = self.cols.shape
        self.Z = sp.csc_matrix((self.vals.ravel(), (np.repeat(np.arange(n), K), self.cols.ravel())),
                               shape=(n, self.q))
        self.lam_rows, self.lam_cols = np.concatenate(rows_l), np.concatenate(cols_l)
        self.lam_theta = np.concatenate(tidx)
        self.lower = np.array(lower)
        self.theta0 = np.where(np.isfinite(self.lower), 1.0, 0.0)
        self.split = self._split()

    def _split(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(its columns, the other columns, k) of the random term to eliminate first, where that pays: the
        largest term's block of Λ'Z'ZΛ + I is block-diagonal (k x k per level, each row in one level), so
        it inverts level by level and leaves a small dense Schur complement for the other terms."""
        if self.q <= 100:
            return None
        off, L, k, _ = max(self.terms, key=lambda t: t[1] * t[2])
        if k > 4 or self.q - L * k > DENSE_MAX:
            return None
        first = np.arange(off, off + L * k)
        return first, np.setdiff1d(np.arange(self.q), first), k

    def Lambda(self, theta: np.ndarray) -> sp.csc_matrix:
        return sp.csc_matrix((theta[self.lam_theta], (self.lam_rows, self.lam_cols)), shape=(self.q, self.q))

    def blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        out = []
        for _, _, k, t0 in self.terms:
            T = np.zeros((k, k))
            rows, cols = _lower_triangle(k)
            T[rows, cols] = theta[t0: t0 + len(rows)]
            out.append(T)
        return out


class _Factor:
    """A factorisation of a symmetric positive definite matrix: solve and log-determinant. Given a
    `split` (see `_Structure._split`), the block-diagonal block is inverted level by level and the rest
    factored densely through its Schur complement."""

    def __init__(self, A, split: tuple[np.ndarray, np.ndarray, int] | None = None):
        q = A.shape[0]
        self._schur = None
        if split is not None and not isinstance(A, np.ndarray):
            self._eliminate(sp.csr_matrix(A), *split)
        elif isinstance(A, np.ndarray) or q <= 100 or (q <= DENSE_MAX and A.nnz > 0.1 * q * q):
            dense = A if isinstance(A, np.ndarray) else A.toarray()
            self._c = linalg.cho_factor(dense, lower=True, check_finite=False)
            self.logdet = 2.0 * float(np.log(np.diag(self._c[0])).sum())
            self._lu = None
        else:
            self._lu = splu(sp.csc_matrix(A), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                            options={"SymmetricMode": True})
            self.logdet = float(np.log(np.abs(self._lu.U.diagonal())).sum())

    def _eliminate(self, A: sp.csr_matrix, first: np.ndarray, rest: np.ndarray, k: int) -> None:
        L = len(first) // k
        blocks = np.empty((L, k, k))
        for i in range(k):
            for j in range(k):
                blocks[:, i, j] = np.asarray(A[first[i::k], first[j::k]]).ravel()
        sign, logdets = np.linalg.slogdet(blocks)
        if (sign <= 0).any():
            raise linalg.LinAlgError("a block of the random-effects system is not positive definite")
        inv = np.linalg.inv(blocks)
        local = np.arange(L)[:, None, None] * k
        rows = np.broadcast_to(local + np.arange(k)[None, :, None], (L, k, k)).ravel()
        cols = np.broadcast_to(local + np.arange(k)[None, None, :], (L, k, k)).ravel()
        binv = sp.csr_matrix((inv.ravel(), (rows, cols)), shape=(L * k, L * k))
        rows_rest = A[rest]
        cross = rows_rest[:, first]
        schur = rows_rest[:, rest].toarray() - (cross @ binv @ cross.T).toarray()
        c = linalg.cho_factor(schur, lower=True, check_finite=False) if len(rest) else None
        self._schur = (first, rest, binv, cross, c)
        self.logdet = float(logdets.sum()) + (2.0 * float(np.log(np.diag(c[0])).sum()) if c else 0.0)

    def solve(self, B: np.ndarray) -> np.ndarray:
        if self._schur is not None:
            first, rest, binv, cross, c = self._schur
            B = np.asarray(B, dtype=float)
            out = np.empty_like(B)
            xr = linalg.cho_solve(c, B[rest] - cross @ (binv @ B[first]), check_finite=False) if c else B[rest]
            out[rest] = xr
            out[first] = binv @ (B[first] - cross.T @ xr)
            return out
        if self._lu is None:
            return linalg.cho_solve(self._c, B, check_finite=False)
        return self._lu.solve(np.asarray(B, dtype=float))


# --------------------------------------------------------------------------------------------- gaussian


class _Gaussian:
    def __init__(self, d: Design, s: _Structure, reml: bool):
        self.d, self.s, self.reml = d, s, reml
        Z, X, y = s.Z, d.X, d.y
        self.ZtZ = (Z.T @ Z).tocsc()
        self.ZtX = np.asarray(Z.T @ X)
        self.Zty = np.asarray(Z.T @ y)
        self.XtX, self.Xty = X.T @ X, X.T @ y
        self.n, self.p = X.shape

    def solve(self, theta: np.ndarray):
        s = self.s
        Lam = s.Lambda(theta)
        A = (Lam.T @ self.ZtZ @ Lam + sp.identity(s.q, format="csc")).tocsc()
        fac = _Factor(A, s.split)
        LZX, LZy = np.asarray(Lam.T @ self.ZtX), np.asarray(Lam.T @ self.Zty)
        S = fac.solve(np.column_stack([LZX, LZy]))
        SX, Sy = S[:, : self.p], S[:, self.p]
        RXtRX = self.XtX - LZX.T @ SX
        beta = linalg.solve(RXtRX, self.Xty - LZX.T @ Sy, assume_a="pos")
        u = Sy - SX @ beta
        b = Lam @ u
        r = self.d.y - self.d.X @ beta - self.s.Z @ b
        prss = float(r @ r + u @ u)
        return fac, RXtRX, beta, u, b, prss

    def deviance(self, theta: np.ndarray) -> float:
        try:
            fac, RXtRX, _, _, _, prss = self.solve(theta)
        except (linalg.LinAlgError, RuntimeError, ValueError, ZeroDivisionError):
            return np.inf
        if not prss > 0:
            return np.inf
        n, p = self.n, self.p
        if self.reml:
            logdet_x = np.linalg.slogdet(RXtRX)[1]
            return fac.logdet + logdet_x + (n - p) * (1 + np.log(2 * np.pi * prss / (n - p)))
        return fac.logdet + n * (1 + np.log(2 * np.pi * prss / n))


def fit_gaussian(d: Design, reml: bool = True) -> EngineFit:
    with threadpool_limits(1):
        return _fit_gaussian(d, reml)


def _fit_gaussian(d: Design, reml: bool) -> EngineFit:
    s = _Structure(d)
    g = _Gaussian(d, s, reml)
    theta, crit, optimizer, tried, derivs = _minimize(g.deviance, s.theta0, s.lower)
    _, RXtRX, beta, _, b, prss = g.solve(theta)
    sigma2 = prss / (g.n - g.p if reml else g.n)
    vcov = sigma2 * linalg.inv(RXtRX)
    messages = _checks(derivs)
    covs = [sigma2 * T @ T.T for T in s.blocks(theta)]
    messages += _singular(s, theta, d)
    return EngineFit(beta, vcov, theta, sigma2, covs, _modes(s, b), crit, optimizer, not messages, messages, tried)


# --------------------------------------------------------------------------------------------- binomial


class _RowZ:
    """Products with Z from its per-row (column, value) pairs: plain numpy, no sparse-matrix overhead in
    the PIRLS loop."""

    def __init__(self, s: _Structure):
        self.cols, self.vals, self.q = s.cols, s.vals, s.q
        n, K = self.cols.shape
        self.pairs = (self.cols[:, :, None] * self.q + self.cols[:, None, :]).reshape(n, K * K)
        self.outer = (self.vals[:, :, None] * self.vals[:, None, :]).reshape(n, K * K)

    def times(self, v: np.ndarray) -> np.ndarray:
        return (self.vals * v[self.cols]).sum(1)

    def t_times(self, r: np.ndarray) -> np.ndarray:
        return np.bincount(self.cols.ravel(), (self.vals * r[:, None]).ravel(), self.q)

    def t_times_matrix(self, R: np.ndarray) -> np.ndarray:
        return np.column_stack([self.t_times(R[:, j]) for j in range(R.shape[1])])

    def gram(self, w: np.ndarray):
        """Z'WZ: dense up to DENSE_MAX random effects, sparse beyond."""
        weights = (self.outer * w[:, None]).ravel()
        if self.q <= DENSE_MAX:
            return np.bincount(self.pairs.ravel(), weights, self.q * self.q).reshape(self.q, self.q)
        flat = self.pairs.ravel()
        return sp.csc_matrix((weights, (flat // self.q, flat % self.q)), shape=(self.q, self.q))


class _Binomial:
    def __init__(self, d: Design, s: _Structure):
        self.d, self.s = d, s
        self.Z = _RowZ(s)
        self.k, self.m = d.y, d.trials
        self.const = float(np.sum(gammaln(self.m + 1) - gammaln(self.k + 1) - gammaln(self.m - self.k + 1)))
        self.u = np.zeros(s.q)
        self.beta_joint = np.zeros(d.X.shape[1])
        self.eye = np.eye(s.q) if s.q <= DENSE_MAX else sp.identity(s.q, format="csc")

    def _loglik(self, eta: np.ndarray) -> float:
        # k log mu + (m - k) log(1 - mu), stably: k*eta - m*log(1 + e^eta)
        return float(np.sum(self.k * eta - self.m * np.logaddexp(0.0, eta))) + self.const

    def _lambda(self, theta: np.ndarray):
        Lam = self.s.Lambda(theta)
        return Lam.toarray() if self.s.q <= DENSE_MAX else Lam

    def information(self, Lam, w: np.ndarray) -> _Factor:
        """The factor of Λ'Z'WZΛ + I."""
        return _Factor(Lam.T @ self.Z.gram(w) @ Lam + self.eye, self.s.split)

    def pirls(self, theta: np.ndarray, beta: np.ndarray | None, tol: float = 1e-11, max_iter: int = 60):
        """Conditional mode of u (and of β too when `beta` is None: the first stage). Returns
        (laplace deviance, u, beta, factor of Λ'Z'WZΛ + I, W, Λ)."""
        X, Z = self.d.X, self.Z
        Lam = self._lambda(theta)
        joint = beta is None
        u = self.u.copy()
        b = self.beta_joint.copy() if joint else np.asarray(beta, float)

        def pdev(u_, b_):
            eta = X @ b_ + Z.times(Lam @ u_)
            return -2 * self._loglik(eta) + float(u_ @ u_), eta

        cur, eta = pdev(u, b)
        for _ in range(max_iter):
            mu = expit(eta)
            w = self.m * mu * (1 - mu)
            resid = self.k - self.m * mu
            fac = self.information(Lam, w)
            gu = Lam.T @ Z.t_times(resid) - u
            if joint:
                XtWZL = (Lam.T @ Z.t_times_matrix(X * w[:, None])).T  # p x q
                XtWX = X.T @ (X * w[:, None])
                gb = X.T @ resid
                AinvZX = fac.solve(XtWZL.T)
                Sch = XtWX - XtWZL @ AinvZX
                Ainvg = fac.solve(gu)
                db = linalg.solve(Sch, gb - XtWZL @ Ainvg, assume_a="pos")
                du = Ainvg - AinvZX @ db
            else:
                du, db = fac.solve(gu), np.zeros_like(b)
            step = 1.0
            for _ in range(30):
                new, eta_new = pdev(u + step * du, b + step * db)
                if new <= cur + 1e-12 * abs(cur):
                    break
                step /= 2
            u, b = u + step * du, b + step * db
            done = abs(cur - new) < tol * (abs(new) + 1) and np.max(np.abs(step * du)) < 1e-7
            cur, eta = new, eta_new
            if done:
                break
        mu = expit(eta)
        w = self.m * mu * (1 - mu)
        fac = self.information(Lam, w)
        if np.all(np.isfinite(u)):
            self.u = u  # warm start for the next evaluation (as lme4 does)
            if joint:
                self.beta_joint = b
        return cur + fac.logdet, u, b, fac, w, Lam

    def stage1(self, theta: np.ndarray) -> float:
        try:
            return self.pirls(theta, None)[0]
        except (linalg.LinAlgError, RuntimeError, ValueError, FloatingPointError):
            return np.inf

    def laplace(self, params: np.ndarray, nt: int) -> float:
        try:
            return self.pirls(params[:nt], params[nt:])[0]
        except (linalg.LinAlgError, RuntimeError, ValueError, FloatingPointError):
            return np.inf


def fit_binomial(d: Design) -> EngineFit:
    with threadpool_limits(1):  # small dense algebra: BLAS threads only spin against each other
        return _fit_binomial(d)


def _fit_binomial(d: Design) -> EngineFit:
    s = _Structure(d)
    g = _Binomial(d, s)
    nt = len(s.theta0)
    with np.errstate(over="ignore", under="ignore"):
        theta1 = _minimize(g.stage1, s.theta0, s.lower, both=False)[0]
        g.stage1(theta1)
        start = np.concatenate([theta1, g.beta_joint])
        lower = np.concatenate([s.lower, np.full(d.X.shape[1], -np.inf)])
        params, crit, optimizer, tried, derivs = _minimize(lambda p: g.laplace(p, nt), start, lower)
        theta, beta = params[:nt], params[nt:]
        _, u, _, fac, w, Lam = g.pirls(theta, beta)
        messages = _checks(derivs)
        H = derivs[1] if np.all(np.isfinite(derivs[1])) else None
        vcov, note = _binomial_vcov(H, nt, g, fac, w, Lam)
    if note:
        messages.append(note)
    messages += _singular(s, theta, d)
    covs = [T @ T.T for T in s.blocks(theta)]
    return EngineFit(beta, vcov, theta, 1.0, covs, _modes(s, Lam @ u), crit, optimizer, not messages, messages,
                     tried)


def _binomial_vcov(H, nt, g: _Binomial, fac, w, Lam):
    """glmer's default: 2 × the (β, β) block of the inverse Hessian of the deviance over (θ, β); when that
    Hessian is not positive definite, the conditional covariance given θ (glmer's use.hessian = FALSE)."""
    if H is not None:
        try:
            np.linalg.cholesky(H)
            return 2 * np.linalg.inv(H)[nt:, nt:], None
        except np.linalg.LinAlgError:
            pass
    X = g.d.X
    XtWZL = (Lam.T @ g.Z.t_times_matrix(X * w[:, None])).T
    Sch = X.T @ (X * w[:, None]) - XtWZL @ fac.solve(XtWZL.T)
    note = ("the Hessian over (θ, β) is not positive definite: standard errors are conditional on the estimated "
            "variance components (glmer's use.hessian = FALSE)")
    try:
        return linalg.inv(Sch), note
    except linalg.LinAlgError:
        p = X.shape[1]
        return np.full((p, p), np.nan), ("the information matrix is singular: no standard errors can be computed "
                                         "(often a sign of separation)")


# --------------------------------------------------------------------------------------------- shared


OPTIMIZERS = ("L-BFGS-B", "Nelder-Mead")  # in the order they are tried


def _minimize(fun, x0: np.ndarray, lower: np.ndarray, both: bool = True):
    """L-BFGS-B, polished by Newton steps; where the result fails lme4's convergence checks or leaves a
    variance on its bound, Nelder-Mead from the same start too, and the best criterion wins (L-BFGS-B
    alone, without Newton steps, where `both` is false: a first stage). Returns (x, criterion, optimizer,
    criteria tried, central-difference derivatives at x: gradient, Hessian, on-bound mask; None without
    Newton steps)."""
    tried: dict[str, float] = {}
    best = None
    for name in OPTIMIZERS if both else OPTIMIZERS[:1]:
        x, f = _descend(fun, x0, lower, name, tried)
        derivs = None
        if both:
            x, f, derivs = _newton(fun, x, f, lower)
        if best is None or f < best[1]:
            best = (x, f, name, derivs)
        on_bound = np.isfinite(lower) & (best[0] <= lower + SINGULAR_TOL)
        if not both or (not _checks(best[3]) and not on_bound.any()):
            break  # a clean interior optimum; a boundary or a failed check gets the second optimizer too
    x, f, name, derivs = best
    return x, f, name, tried, derivs


def _descend(fun, x0: np.ndarray, lower: np.ndarray, name: str, tried: dict[str, float]):
    """One optimizer from `x0`, then restarts from inside for every variance left on its bound. Returns
    (x, criterion)."""
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    if name == "L-BFGS-B":
        kw = {"bounds": bounds, "options": {"maxiter": 2000, "ftol": 1e-9, "gtol": 1e-8}}
    else:  # Nelder-Mead takes finite bounds only
        kw = {"bounds": [(lo if np.isfinite(lo) else -1e6, 1e6) for lo in lower],
              "options": {"maxfev": 300 * len(x0), "xatol": 1e-6, "fatol": 1e-8, "adaptive": True}}
    res = optimize.minimize(fun, x0, method=name, **kw)
    tried[name] = float(res.fun)
    x, f = res.x, float(res.fun)
    # the final polish is the Newton steps' (L-BFGS-B's forward differences cannot resolve the last digits);
    # this short L-BFGS-B run only takes a restart off a bound
    polish = {"method": "L-BFGS-B", "bounds": bounds, "options": {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-9,
                                                                  "maxfun": 100 * len(x0)}}
    # A variance at zero is a stationary point of the deviance (it depends on θ through θ²), where a
    # gradient method stops and a bounded simplex collapses: restart every such θ from inside.
    for _ in range(2):
        improved = False
        for j in np.flatnonzero(np.isfinite(lower) & (x <= lower + 1e-6)):
            x1 = x.copy()
            x1[j] = lower[j] + 0.05
            if fun(x1) >= f:  # the deviance rises into the interior: a true boundary optimum
                continue
            res = optimize.minimize(fun, x1, **polish)
            if res.fun < f - 1e-10:
                x, f, improved = res.x, float(res.fun), True
                tried["restart from the boundary"] = f
        if not improved:
            break
    x = np.where(np.isfinite(lower), np.maximum(x, lower), x)
    return x, float(fun(x))


def _newton(fun, x: np.ndarray, f: float, lower: np.ndarray, steps: int = 4):
    """A few Newton steps on the parameters off their bounds, with central-difference derivatives: they
    resolve the optimum far below the noise of the optimizers' own forward differences. Returns
    (x, f, derivatives at x) so that the convergence checks need not difference again."""
    for i in range(steps + 1):
        derivs = _derivatives(fun, x, lower)
        grad, H, at_bound = derivs
        free = ~at_bound
        if i == steps or not free.any():
            break
        try:
            np.linalg.cholesky(H[np.ix_(free, free)])
            step = np.zeros_like(x)
            step[free] = np.linalg.solve(H[np.ix_(free, free)], grad[free])
        except np.linalg.LinAlgError:
            break
        if float(grad[free] @ step[free]) < 1e-12:  # the Newton decrement: nothing left to gain
            break
        t, improved = 1.0, False
        while t > 1e-3 and not improved:
            x1 = np.where(np.isfinite(lower), np.maximum(x - t * step, lower), x - t * step)
            f1 = fun(x1)
            improved = f1 < f
            t /= 2
        if not improved:
            break
        x, f = x1, float(f1)
    return x, f, derivs


def _derivatives(fun, x: np.ndarray, lower: np.ndarray, h: float = 1e-4):
    """Central-difference gradient and Hessian (lme4's deriv12 step). A parameter on its lower bound is
    differenced one-sidedly into the interior."""
    n = len(x)
    f0 = fun(x)
    steps = h * np.maximum(1.0, np.abs(x))
    grad, H = np.zeros(n), np.zeros((n, n))
    at_bound = np.isfinite(lower) & (x - steps < lower)
    fp, fm = np.zeros(n), np.zeros(n)
    for i in range(n):
        e = np.zeros(n)
        e[i] = steps[i]
        if at_bound[i]:
            f1, f2 = fun(x + e), fun(x + 2 * e)
            grad[i] = (-3 * f0 + 4 * f1 - f2) / (2 * steps[i])
            H[i, i] = (f0 - 2 * f1 + f2) / steps[i] ** 2
            fp[i], fm[i] = f1, np.nan
        else:
            fp[i], fm[i] = fun(x + e), fun(x - e)
            grad[i] = (fp[i] - fm[i]) / (2 * steps[i])
            H[i, i] = (fp[i] - 2 * f0 + fm[i]) / steps[i] ** 2
    for i in range(n):
        for j in range(i + 1, n):
            ei, ej = np.zeros(n), np.zeros(n)
            ei[i], ej[j] = steps[i], steps[j]
            if at_bound[i] or at_bound[j]:
                H[i, j] = (fun(x + ei + ej) - fp[i] - fp[j] + f0) / (steps[i] * steps[j])
            else:
                H[i, j] = (fun(x + ei + ej) - fun(x + ei - ej) - fun(x - ei + ej) + fun(x - ei - ej)) / (
                    4 * steps[i] * steps[j])
            H[j, i] = H[i, j]
    return grad, H, at_bound


def _checks(derivs) -> list[str]:
    """lme4's convergence checks at the optimum: the Hessian-scaled gradient, and a positive definite
    Hessian (parameters on their bound are left out: that is the boundary check's business)."""
    grad, H, at_bound = derivs
    if not np.all(np.isfinite(H)):
        return ["the criterion is not finite near the optimum"]
    free = ~at_bound
    Hf, gf = H[np.ix_(free, free)], grad[free]
    if not gf.size:
        return []
    try:
        C = np.linalg.cholesky(Hf)
    except np.linalg.LinAlgError:
        eig = np.linalg.eigvalsh(Hf)
        return [f"the Hessian at the optimum is not positive definite (smallest eigenvalue {eig[0]:.3g}): "
                "a saddle point, or a model the data cannot identify"]
    worst = float(np.max(np.abs(linalg.solve_triangular(C, gf, lower=True))))
    if worst > GRAD_TOL:
        return [f"failed to converge: the scaled gradient at the optimum is {worst:.2g} (tolerance {GRAD_TOL:g})"]
    return []


def _singular(s: _Structure, theta: np.ndarray, d: Design) -> list[str]:
    """Boundary (singular) fit: a variance at zero, or a correlation at ±1 (a block of Λ losing rank)."""
    out = []
    for t, names, T in zip(d.formula.random, d.random_names, s.blocks(theta)):
        diag = np.abs(np.diag(T))
        if np.any(diag < SINGULAR_TOL):
            names = [n for n, v in zip(names, diag) if v < SINGULAR_TOL]
            out.append(f"boundary (singular) fit: the random-effect sd of {', '.join(names)} in {t} is estimated "
                       "at zero; simplify the random part (e.g. drop that term) before trusting these numbers")
    return out


def _modes(s: _Structure, b: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(b[off: off + L * k]).reshape(L, k) for off, L, k, _ in s.terms]
