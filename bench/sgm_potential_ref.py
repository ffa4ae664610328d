#!/usr/bin/env python3
"""The potential parameterisation of the score model in plain PyTorch, for bench/sgm_bench.sh.

The reference ../shared/ref/sgm_ref.py learns the score directly. This variant learns a scalar network
u(x, t) (3 hidden layers of 128, SiLU, output width 1) and predicts the noise as its x-gradient, as mfglab's
sgm does with "parameterization": "potential":
    eps_hat = grad_x u(x, t),   score s = -eps_hat / sigma_t    (a gradient field by construction)
DSM loss  E |eps_hat(alpha_t x0 + sigma_t z, t) - z|^2     (lambda(t) = sigma_t^2)
Score-PDE penalty (weight --hjb_weight) as in sgm_ref.py, VP SDE:
    --hjb_form lap:   s_t = beta/2 ( s + J x + Lap s + 2 J s )
    --hjb_form grad:  s_t = grad_x [ beta/2 ( div s + |s|^2 + x.s ) ]
batch mean of |s_t - rhs|_1, every derivative by autograd (third order in u for Lap s). The penalty is taken
at the same forward-noised points as the DSM loss and shares its first backward pass (mfglab draws its own
collocation points, so this side does less work). Data, noise schedule, timing and output: those of
sgm_ref.py, whose helpers are imported from there.
"""
import argparse, json, os, statistics, sys, time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--ref_dir', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'ref'))
p.add_argument('--data', default='8gaussians')
p.add_argument('--iters', type=int, default=200)
p.add_argument('--batch', type=int, default=1024)
p.add_argument('--width', type=int, default=128)
p.add_argument('--depth', type=int, default=3)
p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--eps', type=float, default=1e-3)
p.add_argument('--hjb_weight', type=float, default=1.0)
p.add_argument('--hjb_form', default='lap', choices=['lap', 'grad'])
p.add_argument('--seed', type=int, default=0)
p.add_argument('--threads', type=int, default=1)
p.add_argument('--warmup', type=int, default=5)
p.add_argument('--out', default='potential_ref.json')
args = p.parse_args()
os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
sys.path.insert(0, os.path.abspath(args.ref_dir))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import sgm_ref  # noqa: E402  (toy_data, VPSDE)


class PotentialNet(torch.nn.Module):
    def __init__(self, d, width, depth):
        super().__init__()
        layers, k = [], d + 1
        for _ in range(depth):
            layers += [torch.nn.Linear(k, width), torch.nn.SiLU()]
            k = width
        self.mlp = torch.nn.Sequential(*layers, torch.nn.Linear(k, 1))

    def forward(self, x, t):
        return self.mlp(torch.cat([x, t.unsqueeze(1)], 1)).squeeze(1)


def residual(s, x, t, beta, form):
    """s_t - rhs of the VP score PDE for a score s(x, t) whose graph reaches x and t."""
    d = x.shape[1]
    rows = [torch.autograd.grad(s[:, j].sum(), (x, t), create_graph=True) for j in range(d)]
    J = torch.stack([r[0] for r in rows], 2)  # J[n, i, j] = d_i s_j
    s_t = torch.stack([r[1] for r in rows], 1)
    b = 0.5 * beta.unsqueeze(1)
    if form == 'grad':
        pot = b.squeeze(1) * (torch.diagonal(J, dim1=1, dim2=2).sum(1) + (s * s).sum(1) + (x * s).sum(1))
        rhs = torch.autograd.grad(pot.sum(), x, create_graph=True)[0]
    else:
        lap = torch.stack([sum(torch.autograd.grad(J[:, i, j].sum(), x, create_graph=True)[0][:, i]
                               for i in range(d)) for j in range(d)], 1)
        rhs = b * (s + torch.einsum('nij,nj->ni', J, x) + lap + 2 * torch.einsum('nij,nj->ni', J, s))
    return s_t - rhs


def main():
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed + 1)
    sde = sgm_ref.VPSDE(0.1, 20.0)
    net = PotentialNet(2, args.width, args.depth)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    times, losses = [], []
    for it in range(1, args.iters + 1):
        x0 = torch.from_numpy(sgm_ref.toy_data(args.data, args.batch, rng))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        n = len(x0)
        t = (args.eps + (1 - args.eps) * torch.rand(n, generator=gen)).requires_grad_()
        z = torch.randn(n, 2, generator=gen)
        a, sig = sde.alpha_sigma(t)  # differentiable in t: the score's time derivative needs sigma_t'
        x = (a.unsqueeze(1) * x0 + sig.unsqueeze(1) * z).detach().requires_grad_()
        eps_hat = torch.autograd.grad(net(x, t).sum(), x, create_graph=True)[0]
        dsm = ((eps_hat - z.detach()) ** 2).sum(1).mean()
        loss = dsm
        if args.hjb_weight > 0:
            s = -eps_hat / sig.unsqueeze(1)
            loss = loss + args.hjb_weight * residual(s, x, t, sde.beta(t.detach()), args.hjb_form).abs().sum(1).mean()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    timed = times[args.warmup:] if len(times) > args.warmup else times
    print(f'potential ref ({args.hjb_form}, weight {args.hjb_weight}): median {statistics.median(timed) * 1e3:.2f} ms/it, '
          f'final loss {losses[-1]:.4f}')
    with open(args.out, 'w') as f:
        json.dump(dict(script='sgm_potential_ref', args=vars(args), torch=torch.__version__, iter_s=times, loss=losses), f)


if __name__ == '__main__':
    main()
