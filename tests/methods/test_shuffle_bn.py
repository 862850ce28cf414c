"""Shuffle-BN: MoCo's step against the official one built by hand, keys
enqueued with their own images, and SimCLR's views never in one split."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from negatives.methods.moco import MoCo
from negatives.methods.simclr import SimCLR
from negatives.models import SplitBatchNorm2d, build_encoder
from negatives.queues.fifo import KeyQueue

B, K, DIM, T, M = 8, 32, 16, 0.2, 0.9


class DemoSplitBatchNorm(nn.BatchNorm2d):
    """The official CIFAR demo's ``SplitBatchNorm`` (one ``F.batch_norm`` over
    the batch reshaped to ``[N / s, C s, H, W]``, running statistics averaged
    over the splits), on contiguous splits: the demo's reshape of
    ``x.view(s, N / s, ...)`` moved to split-major order."""

    def __init__(self, bn: SplitBatchNorm2d):
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum)
        self.num_splits = bn.num_splits
        self.to(bn.weight.dtype).load_state_dict(bn.state_dict())

    def forward(self, x):
        n, c, h, w = x.shape
        s = self.num_splits
        if not self.training:
            return super().forward(x)
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        grouped = x.reshape(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        out = F.batch_norm(
            grouped, mean, var, self.weight.repeat(s), self.bias.repeat(s), True, self.momentum, self.eps
        )
        self.running_mean.data.copy_(mean.view(s, c).mean(0))
        self.running_var.data.copy_(var.view(s, c).mean(0))
        self.num_batches_tracked.add_(1)
        return out.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def _demo_copy(encoder: nn.Module) -> nn.Module:
    ref = copy.deepcopy(encoder)
    for _, module in list(ref.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SplitBatchNorm2d):
                setattr(module, child_name, DemoSplitBatchNorm(child))
    return ref


class Official:
    """One MoCo v2 step as facebookresearch/moco's ``MoCo.forward`` writes it
    (queue ``[D, K]``), with the CIFAR demo's single-device shuffle."""

    def __init__(self, model: MoCo):
        self.encoder_q = _demo_copy(model.encoder_q)
        self.encoder_k = _demo_copy(model.encoder_k)
        self.queue = model.queue.keys.T.clone()  # [D, K]
        self.ptr = 0

    def step(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
                p_k.data = p_k.data * M + p_q.data * (1.0 - M)
            idx_shuffle = torch.randperm(im_k.shape[0])
            idx_unshuffle = torch.argsort(idx_shuffle)
            k = F.normalize(self.encoder_k(im_k[idx_shuffle]), dim=1)
            k = k[idx_unshuffle]
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        logits = torch.cat([l_pos, l_neg], dim=1) / T
        loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))
        self.queue[:, self.ptr : self.ptr + k.shape[0]] = k.T
        self.ptr = (self.ptr + k.shape[0]) % self.queue.shape[1]
        return loss


def _queue(seed):
    return KeyQueue(K, DIM, generator=torch.Generator().manual_seed(seed))


def _model(splits=4, seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("small-cnn", 1, dim=DIM, num_splits=splits, width=4).double()
    return MoCo(enc, _queue(1), momentum=M, temperature=T).double().train()


def _views(step):
    g = torch.Generator().manual_seed(100 + step)
    return (
        torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("splits", [2, 4])
def test_our_step_is_the_official_step_with_the_same_permutation(splits):
    ours = _model(splits)
    ref = Official(ours)
    opt_ours = torch.optim.SGD(ours.encoder_q.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.encoder_q.parameters(), lr=0.5)
    for step in range(3):  # the queue wraps no batch; three pointer positions
        x_q, x_k = _views(step)
        torch.manual_seed(step)
        loss, _ = ours(x_q, x_k, torch.zeros(B, dtype=torch.long), torch.arange(B))
        torch.manual_seed(step)  # the same permutation
        loss_ref = ref.step(x_q, x_k)
        assert abs(loss.item() - loss_ref.item()) < 1e-12, step
        for opt, lo in ((opt_ours, loss), (opt_ref, loss_ref)):
            opt.zero_grad()
            lo.backward()
        for (name, p), p_ref in zip(ours.encoder_q.named_parameters(), ref.encoder_q.parameters()):
            assert torch.allclose(p.grad, p_ref.grad, rtol=0, atol=1e-12), (step, name)
        for (name, v), v_ref in zip(ours.encoder_k.state_dict().items(), ref.encoder_k.state_dict().values()):
            assert torch.allclose(v.double(), v_ref.double(), rtol=0, atol=1e-12), (step, name)
        assert torch.allclose(ours.queue.keys, ref.queue.T, rtol=0, atol=1e-12), step
        assert int(ours.queue.ptr) == ref.ptr
        opt_ours.step()
        opt_ref.step()


class Reveal(nn.Module):
    """An encoder whose output is its input (one image a one-hot pixel):
    the key tells which image it was computed from.  Records what it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.scale = nn.Parameter(torch.ones(()))  # a parameter for the momentum update

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1) * self.scale


def test_each_enqueued_key_is_the_key_of_its_own_querys_image():
    model = MoCo(Reveal(), _queue(0), momentum=M, temperature=T).train()
    x = torch.eye(DIM)[:B].view(B, 1, 4, 4)  # image i: pixel i lit
    torch.manual_seed(0)
    model(x, x, torch.arange(B) + 100, torch.arange(B) + 200)
    keys = model.queue.keys[:B]
    assert torch.equal(keys, torch.eye(DIM)[:B])  # key i from image i
    assert model.queue.labels[:B].tolist() == list(range(100, 100 + B))
    assert model.queue.indices[:B].tolist() == list(range(200, 200 + B))
    # the key encoder saw the batch shuffled, the query encoder in order
    seen_k = model.encoder_k.seen[-1].flatten(1).argmax(1)
    assert sorted(seen_k.tolist()) == list(range(B)) and seen_k.tolist() != list(range(B))
    assert model.encoder_q.seen[-1].flatten(1).argmax(1).tolist() == list(range(B))


def test_no_shuffle_in_eval_mode():
    model = MoCo(Reveal(), _queue(0), momentum=M, temperature=T).eval()
    x = torch.eye(DIM)[:B].view(B, 1, 4, 4)
    state = torch.get_rng_state()
    model(x, x, torch.arange(B), torch.arange(B))
    assert model.encoder_k.seen[-1].flatten(1).argmax(1).tolist() == list(range(B))
    assert torch.equal(torch.get_rng_state(), state)  # no draw either


def test_the_permutation_comes_from_the_seeded_global_generator():
    outs = []
    for _ in range(2):
        model = MoCo(Reveal(), _queue(0), momentum=M, temperature=T).train()
        torch.manual_seed(7)
        model(
            torch.eye(DIM)[:B].view(B, 1, 4, 4), torch.eye(DIM)[:B].view(B, 1, 4, 4), torch.arange(B), torch.arange(B)
        )
        outs.append(model.encoder_k.seen[-1].flatten(1).argmax(1))
    torch.manual_seed(7)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], torch.randperm(B))


@pytest.mark.parametrize("splits", [2, 4, 8])
def test_simclr_never_normalises_both_views_of_an_image_in_one_split(splits):
    enc = build_encoder("small-cnn", 1, dim=DIM, num_splits=splits, width=4)
    seen = []
    enc.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    bns = [m for m in enc.modules() if isinstance(m, SplitBatchNorm2d)]
    assert bns and all(m.num_splits == splits for m in bns)
    model = SimCLR(enc, temperature=T).train()
    b = 8
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 8, 8)
    model(images, images + 0.0, torch.zeros(b, dtype=torch.long), torch.arange(b))
    ids = seen[-1][:, 0, 0, 0].round().long()  # the image of each row of the encoder's batch
    for chunk in ids.chunk(splits):  # SplitBatchNorm2d's contiguous splits
        assert len(set(chunk.tolist())) == len(chunk), (splits, chunk.tolist())
