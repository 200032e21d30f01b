"""Reference trajectories of diffusers' UniPCMultistepScheduler (flow mode) for settings the Wan
fixtures do not cover: solver_order 3, bh1, disable_corrector, final_sigmas_type "sigma_min",
lower_order_final False. Writes unipc_orders.json next to this file.

Run with the parity venv (see tools/parity/README.md):
    /work/venv-parity/bin/python crates/zoetrope-sampling/tests/data/make_unipc_orders.py
"""

import json
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler

BASE = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True)
CASES = {
    "order3_bh2_disable1": dict(solver_order=3, solver_type="bh2", flow_shift=5.0, disable_corrector=[1]),
    # The last step goes from sigma_min to sigma_min (h = 0): torch gives NaN there.
    "order3_bh1_sigma_min_no_lof": dict(
        solver_order=3, solver_type="bh1", flow_shift=2.0, final_sigmas_type="sigma_min", lower_order_final=False
    ),
}
STEPS = 7

g = torch.Generator().manual_seed(0)
x_init = torch.randn(1, 2, 3, generator=g)
noise = [torch.randn(1, 2, 3, generator=g) for _ in range(STEPS)]
res = {"sample_init": x_init.flatten().tolist(), "noise": [n.flatten().tolist() for n in noise], "cases": {}}
for name, cfg in CASES.items():
    s = UniPCMultistepScheduler(**BASE, **cfg)
    s.set_timesteps(STEPS)
    s.set_begin_index(0)
    x = x_init.clone()
    traj = []
    for i, t in enumerate(s.timesteps):
        model_out = 0.5 * x + noise[i]
        x = s.step(model_out, t, x, return_dict=False)[0]
        # NaN (torch's result at h = 0) is written as null.
        traj.append([None if v != v else v for v in x.flatten().tolist()])
    res["cases"][name] = {
        "config": {**BASE, **cfg},
        "timesteps": s.timesteps.tolist(),
        "sigmas": s.sigmas.tolist(),
        "samples": traj,
    }
out = Path(__file__).with_name("unipc_orders.json")
out.write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
