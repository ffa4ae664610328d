#!/usr/bin/env python3
"""OT-Flow in plain PyTorch with a choice of Hamiltonian, for the side-by-side benchmark of mfglab's otflow
(bench/otflow_hamiltonian_bench.sh). It reuses ../shared/ref/otflow_ref.py (its potential with the closed-form
gradient, its data, its RK4) and changes only the right-hand side of the augmented ODE
    d/dt [x, l, L, R] = [v, div v, L(v), | -d_t Phi + H(grad_x Phi) |],   v = -dH/dp(grad_x Phi):

  --hamiltonian quadratic  H = |p|^2 / (2 lambda): the reference's own closed form (v = -p / lambda,
                           div v = -tr(Hess_xx Phi) / lambda).
  --hamiltonian diagonal   H = sum_k p_k^2 / (2 lambda_k) (--lambdas): the same closed form with the weighted trace
                           sum_k Hess_kk / lambda_k (the x rows of K_0 scaled by 1 / sqrt(lambda_k) in the Jacobian
                           recursion).
  --hamiltonian lp         H = |p|^q / q, q = p / (p - 1), running cost |v|^p / p (--p), through autograd:
                           v = -dH/dp by autograd through H, div v by d reverse passes of v_k with respect to x
                           (through the closed-form gradient of the network), as a PyTorch user writes it for an H
                           with no closed form.
  --through autograd       the autograd treatment above for the quadratic and diagonal Hamiltonians too.

Training as the reference: Adam, lr halved every 100 iterations, batch redrawn every 25 iterations, alphas 1,100,5.
Writes a JSON with the per-iteration seconds (iter_s) and their median after the warm-up.
"""
import argparse, importlib.util, json, math, os, statistics, time

here = os.path.dirname(os.path.abspath(__file__))


def get_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ref', default=os.path.join(here, '..', '..', 'shared', 'ref', 'otflow_ref.py'))
    p.add_argument('--hamiltonian', default='lp', choices=['quadratic', 'diagonal', 'lp'])
    p.add_argument('--through', default='closed', choices=['closed', 'autograd'])
    p.add_argument('--lambda_', type=float, default=1.0, dest='lam')
    p.add_argument('--lambdas', default='0.5,2', help='diagonal: lambda_k, one per dimension')
    p.add_argument('--p', type=float, default=1.5, help='lp: exponent of the running cost |v|^p / p')
    p.add_argument('--data', default='8gaussians')
    p.add_argument('--iters', type=int, default=60)
    p.add_argument('--batch', type=int, default=2048)
    p.add_argument('--width', type=int, default=32)
    p.add_argument('--layers', type=int, default=2)
    p.add_argument('--nt', type=int, default=8)
    p.add_argument('--alph', default='1,100,5')
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--out', default='ref_hamiltonian.json')
    return p.parse_args()


ARGS = get_args()
# As the reference: thread counts fixed before numpy/torch load OpenBLAS.
os.environ.setdefault('OMP_NUM_THREADS', str(ARGS.threads))
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
spec = importlib.util.spec_from_file_location('otflow_ref', ARGS.ref)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def weighted_grad_trace(net, s, c):
    """grad_s Phi and sum_k c_k (Hess_xx Phi)_kk: the reference's closed form with sqrt(c_k) on the Jacobian rows."""
    d, h, M = net.d, net.h, len(net.K)
    a = [net.K0(s)]
    u = net.act(a[0])
    for i, lay in enumerate(net.K):
        a.append(lay(u))
        if i < M - 1:
            u = u + h * net.act(a[-1])
    th = [torch.tanh(ai) for ai in a]
    z = [None] * M + [net.w]
    for i in range(M, 0, -1):
        z[i - 1] = torch.addmm(z[i], th[i] * z[i], net.K[i - 1].weight, alpha=h)
    symA = net.A.t() @ net.A
    grad = torch.addmm(torch.addmm(net.b, s, symA), th[0] * z[0], net.K0.weight)
    Kx = net.K0.weight[:, :d] * c.sqrt()  # m x d
    tr = ((1 - th[0] * th[0]) * z[0]) @ (Kx * Kx).sum(1) + (torch.diagonal(symA)[:d] * c).sum()
    J = th[0].unsqueeze(0) * Kx.t().unsqueeze(1)
    for i in range(1, M + 1):
        KJ = J @ net.K[i - 1].weight.t()
        tr = tr + h * (((1 - th[i] * th[i]) * z[i]) * (KJ * KJ).sum(0)).sum(1)
        if i < M:
            J = J + h * th[i].unsqueeze(0) * KJ
    return grad, tr


def hamiltonian_fns(args, d):
    """H(p) [n] and L(v) [n] as torch functions, and c_k = 1 / lambda_k for the quadratic kinds."""
    if args.hamiltonian == 'lp':
        p, q = args.p, args.p / (args.p - 1)
        return (lambda g: (g * g).sum(1).pow(q / 2) / q), (lambda v: (v * v).sum(1).pow(p / 2) / p), None
    lam = [args.lam] * d if args.hamiltonian == 'quadratic' else [float(a) for a in args.lambdas.split(',')]
    assert len(lam) == d, 'one lambda per dimension'
    c = 1.0 / torch.tensor(lam)
    return (lambda g: 0.5 * (g * g * c).sum(1)), (lambda v: 0.5 * (v * v / c).sum(1)), c


def make_rhs(net, args):
    d = net.d
    H, L, c = hamiltonian_fns(args, d)

    def closed(z, t):  # quadratic kinds: everything in closed form
        grad, tr = weighted_grad_trace(net, F.pad(z[:, :d], (0, 1), value=t), c)
        g = grad[:, :d]
        v = -g * c
        kin = 0.5 * (g * g * c).sum(1, keepdim=True)
        return torch.cat([v, -tr.unsqueeze(1), kin, (kin - grad[:, d:]).abs()], 1)

    def through_h(z, t):  # v = -dH/dp by autograd, div v by d reverse passes with respect to x
        build = torch.is_grad_enabled()
        with torch.enable_grad():
            x = z[:, :d]
            x = x if x.requires_grad else x.detach().requires_grad_()
            grad, _ = net.grad_trace(F.pad(x, (0, 1), value=t), trace=False)
            p = grad[:, :d]
            hp = H(p)
            v = -torch.autograd.grad(hp.sum(), p, create_graph=True)[0]
            div = sum(torch.autograd.grad(v[:, k].sum(), x, create_graph=build, retain_graph=True)[0][:, k]
                      for k in range(d))
            out = torch.cat([v, div.unsqueeze(1), L(v).unsqueeze(1), (hp - grad[:, d]).abs().unsqueeze(1)], 1)
        return out if build else out.detach()

    return through_h if (args.hamiltonian == 'lp' or args.through == 'autograd') else closed


def main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    alph = [float(a) for a in args.alph.split(',')]
    net = ref.Potential(2, args.width, args.layers)
    rhs = make_rhs(net, args)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    times, losses = [], []
    for it in range(1, args.iters + 1):
        if (it - 1) % 25 == 0:
            x = torch.from_numpy(ref.toy_data(args.data, args.batch, rng))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        L, C, R, _ = ref.ot_flow_terms(rhs, x, args.nt)
        loss = alph[0] * L + alph[1] * C + alph[2] * R
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if it % 100 == 0:
            for g in opt.param_groups:
                g['lr'] /= 2.0
    timed = times[args.warmup:] if len(times) > args.warmup else times
    res = dict(script='otflow_ref_hamiltonian', args=vars(args), torch=torch.__version__,
               threads=torch.get_num_threads(), sec_per_iter_median=statistics.median(timed), iter_s=times,
               final_loss=losses[-1])
    print(f'{args.hamiltonian} ({"autograd through H" if rhs.__name__ == "through_h" else "closed form"}): '
          f'{res["sec_per_iter_median"]:.4f} s/it, final loss {losses[-1]:.4f}')
    with open(args.out, 'w') as f:
        json.dump(res, f)


if __name__ == '__main__':
    main(ARGS)
