"""Reference epsilons for the primia privacy accountant, from Opacus and Google dp-accounting.

Writes a JSON table (argument 1, default model/tests/data/accountant_reference.json)
that model/tests/privacy_accountant.rs checks the Rust accountant against,
without Python. Both references are evaluated on the accountant's own order
grid (`primia_model::privacy::default_orders`, repeated below), so the
comparison is of the same RDP computation, not of different grids.

Opacus: `opacus.accountants.analysis.rdp` (compute_rdp, get_privacy_spent).
dp-accounting: `RdpAccountant` composing `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`.
"""

import importlib.metadata
import importlib.util
import json
import math
import os
import sys

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp


def _load_opacus_rdp():
    # opacus/__init__.py imports torch; its RDP analysis module needs only
    # numpy and scipy, so it is loaded on its own from the installed package.
    pkg = importlib.util.find_spec("opacus").submodule_search_locations[0]
    path = os.path.join(pkg, "accountants", "analysis", "rdp.py")
    spec = importlib.util.spec_from_file_location("opacus_rdp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


opacus_rdp = _load_opacus_rdp()

# Must equal primia_model::privacy::default_orders().
ORDERS = (
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)]
    + [64.0, 80.0, 96.0, 112.0, 128.0, 160.0, 192.0, 256.0, 512.0, 1024.0]
)

# (q, sigma, steps, delta): the regimes DP-SGD is run in, from tight to loose
# budgets, including Abadi et al. 2016 (q = 0.01, sigma = 4, 10000 steps) and
# PneumoniaMNIST-sized ones (4708 training images).
CASES = [
    (0.01, 4.0, 10000, 1e-5),
    (0.01, 2.0, 10000, 1e-5),
    (0.01, 8.0, 10000, 1e-5),
    (0.01, 1.1, 10000, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.001, 1.0, 10000, 1e-6),
    (0.004, 1.1, 60000, 1e-5),
    (256 / 60000, 1.1, 60 * 60000 // 256, 1e-5),
    (64 / 4708, 1.0, 3000, 1e-5),
    (64 / 4708, 0.8, 2000, 1e-5),
    (64 / 4708, 0.6, 1500, 1e-5),
    (128 / 4708, 0.9, 1000, 1e-5),
    (0.05, 0.5, 100, 1e-5),
    (0.1, 3.0, 500, 1e-6),
    (0.02, 0.7, 200, 1e-3),
    (0.5, 5.0, 50, 1e-5),
    (1.0, 10.0, 100, 1e-5),
    (1.0, 2.0, 10, 1e-5),
    (0.001, 0.5, 100000, 1e-8),
    (0.0001, 0.8, 1000000, 1e-6),
    (0.03, 1.5, 3000, 1e-5),
    (0.01, 0.3, 50, 1e-5),
    (0.2, 1.2, 1000, 1e-5),
    (0.001, 20.0, 1000, 1e-5),
]

# (q, steps, delta, target epsilon) for the inverse: the smallest noise multiplier.
NOISE_CASES = [
    (0.01, 10000, 1e-5, 1.0),
    (0.01, 10000, 1e-5, 8.0),
    (64 / 4708, 3000, 1e-5, 8.0),
    (64 / 4708, 3000, 1e-5, 3.0),
    (0.004, 15000, 1e-5, 2.0),
    (0.1, 1000, 1e-6, 5.0),
    (1.0, 100, 1e-5, 10.0),
]


def opacus_eps(q, sigma, steps, delta):
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    eps, order = opacus_rdp.get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps), float(order)


def dpa_eps(q, sigma, steps, delta):
    acc = dpa_rdp.RdpAccountant(orders=ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(event, steps)
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def abadi_moments(q, sigma, steps, delta):
    """Abadi et al. 2016's moments accountant: integer lambda = alpha - 1 in 1..=32,
    eps = min (T * log-moment + log(1/delta)) / lambda, with the exact log moment
    (the integer-order RDP times lambda)."""
    best = math.inf
    for lam in range(1, 33):
        a = lam + 1.0
        rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=[a])[0]
        best = min(best, (rdp * lam + math.log(1 / delta)) / lam)
    return best


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "model/tests/data/accountant_reference.json"
    epsilon_rows = []
    for q, sigma, steps, delta in CASES:
        oe, oo = opacus_eps(q, sigma, steps, delta)
        de, do = dpa_eps(q, sigma, steps, delta)
        epsilon_rows.append(
            {
                "sample_rate": q,
                "noise_multiplier": sigma,
                "steps": steps,
                "delta": delta,
                "opacus_epsilon": oe,
                "opacus_order": oo,
                "dp_accounting_epsilon": de,
                "dp_accounting_order": do,
            }
        )
        print(f"q={q:.6g} sigma={sigma} T={steps} delta={delta:g}: opacus {oe:.6f} (order {oo}), dp-accounting {de:.6f} (order {do})")
    noise_rows = []
    for q, steps, delta, target in NOISE_CASES:
        # dp-accounting's calibration: smallest sigma with epsilon <= target (bisection to 1e-6).
        def make_event(sigma):
            return dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
            )

        sigma = dp_accounting.calibrate_dp_mechanism(
            lambda: dpa_rdp.RdpAccountant(orders=ORDERS),
            make_event,
            target,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-7,
        )
        noise_rows.append(
            {
                "sample_rate": q,
                "steps": steps,
                "delta": delta,
                "target_epsilon": target,
                "dp_accounting_noise_multiplier": float(sigma),
            }
        )
        print(f"noise q={q:.6g} T={steps} delta={delta:g} eps={target}: sigma {sigma:.6f}")
    abadi = abadi_moments(0.01, 4.0, 10000, 1e-5)
    print(f"Abadi et al. 2016 moments accountant, q=0.01 sigma=4 T=10000 delta=1e-5: {abadi:.4f} (paper: 1.26)")
    doc = {
        "generated_by": "scripts/validate-accountant.sh",
        "opacus_version": importlib.metadata.version("opacus"),
        "dp_accounting_version": importlib.metadata.version("dp-accounting"),
        "orders": ORDERS,
        "epsilon": epsilon_rows,
        "noise": noise_rows,
        "abadi_moments_accountant": {
            "sample_rate": 0.01,
            "noise_multiplier": 4.0,
            "steps": 10000,
            "delta": 1e-5,
            "max_lambda": 32,
            "epsilon": abadi,
            "published_epsilon": 1.26,
        },
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
