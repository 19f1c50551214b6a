"""Architectures users bring that slimtune did not write (issue 20), small enough for
a 2-core machine, trained briefly on scikit-learn's digits and handed over with
``Task.from_model``:

- ``vit``: ``transformers``' ViTForImageClassification (1 channel, 16x16, patch 4);
- ``bert`` / ``distilbert``: ``transformers``' text classifiers on token ids
  (``input_ids`` only);
- ``tokens``: ``nn.TransformerEncoder`` over ``nn.Embedding`` with a CLS token;
- ``mobilenet_v3``: MobileNetV3-style blocks with squeeze-excite, hard-swish and
  BatchNorm (:mod:`tests._mobilenet`);
- ``mlp_bn``: an MLP with ``BatchNorm1d`` on the 64 pixel values as tabular features.

The token models read each digit as a sequence: a CLS token (id 17), then the 64 pixel
values (0..16) as ids, so the data are real digits with the same 60/20/20 split as the
built-in task.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from slimtune import Task

ARCHS = ("vit", "bert", "distilbert", "tokens", "mobilenet_v3", "mlp_bn")
#: Token ids: pixel values 0..16, then the CLS token.
CLS_ID = 17
VOCAB = 18


# -- data ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, ...]:
    from slimtune.tasks import get_task

    d = get_task("digits").data
    return d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """The built-in task's normalised digits back to their pixel values 0..16."""
    return torch.round((x * 0.4 + 0.3) * 16).clamp(0, 16)


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(N, 65)`` int64 ids: CLS, then the 64 pixel values."""
    ids = _pixels(x).reshape(len(x), -1).long()
    return torch.cat([torch.full((len(x), 1), CLS_ID, dtype=torch.long), ids], dim=1)


def data(arch: str) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_val, y_val, x_test, y_test)`` as ``arch`` reads them."""
    xtr, ytr, xva, yva, xte, yte = _digits()
    if arch in ("bert", "distilbert", "tokens"):
        f = as_tokens
    elif arch == "vit" or arch == "mobilenet_v3":
        f = lambda x: F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    elif arch == "mlp_bn":
        f = lambda x: x.reshape(len(x), -1)  # noqa: E731
    else:
        raise ValueError(f"`arch` must be one of {', '.join(ARCHS)}, but got {arch!r}.")
    return f(xtr), ytr, f(xva), yva, f(xte), yte


# -- models ----------------------------------------------------------------------------
class TokenTransformer(nn.Module):
    """``nn.Embedding`` + learned positions -> ``nn.TransformerEncoder`` -> the CLS
    token's features -> ``nn.Linear`` (a classifier a user writes in a few lines)."""

    def __init__(self, vocab: int = VOCAB, length: int = 65, dim: int = 32, heads: int = 4, layers: int = 2,
                 classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(ids) + self.pos)
        return self.fc(self.norm(x[:, 0]))


class MLPBatchNorm(nn.Sequential):
    """Tabular features -> (Linear, BatchNorm1d, ReLU) x 2 -> Linear."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden // 2), nn.BatchNorm1d(hidden // 2), nn.ReLU(),
                         nn.Linear(hidden // 2, classes))


def build(arch: str) -> nn.Module:
    """A randomly initialised model of ``arch`` (seeded)."""
    torch.manual_seed(0)
    if arch == "tokens":
        return TokenTransformer()
    if arch == "mlp_bn":
        return MLPBatchNorm()
    if arch == "mobilenet_v3":
        from tests._mobilenet import mobilenet_like

        return mobilenet_like()
    import transformers as tf

    if arch == "vit":
        config = tf.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=64, num_labels=10,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tf.ViTForImageClassification(config)
    if arch == "bert":
        config = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=65, num_labels=10,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tf.BertForSequenceClassification(config)
    if arch == "distilbert":
        config = tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                     max_position_embeddings=65, num_labels=10, dropout=0.0, attention_dropout=0.0,
                                     seq_classif_dropout=0.0)
        return tf.DistilBertForSequenceClassification(config)
    raise ValueError(f"`arch` must be one of {', '.join(ARCHS)}, but got {arch!r}.")


#: Whether the model's forward returns an object with ``.logits`` (``output="logits"``).
HF = ("vit", "bert", "distilbert")


def _logits(model: nn.Module, arch: str):
    return (lambda x: model(x).logits) if arch in HF else model


#: Training steps (batch 64, AdamW 3e-3) that bring each model near its plateau on digits.
STEPS = {"vit": 600, "bert": 500, "distilbert": 500, "tokens": 500, "mobilenet_v3": 400, "mlp_bn": 300}


@functools.lru_cache(maxsize=8)
def _trained_state(arch: str, steps: int) -> dict[str, torch.Tensor]:
    xtr, ytr, *_ = data(arch)
    model = build(arch)
    forward = _logits(model, arch)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (64,), generator=g)
        loss = F.cross_entropy(forward(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained(arch: str, steps: int | None = None) -> nn.Module:
    """``arch`` trained for ``steps`` (default :data:`STEPS`), in eval mode."""
    model = build(arch)
    model.load_state_dict(_trained_state(arch, STEPS[arch] if steps is None else steps))
    return model.eval()


def task(arch: str, steps: int | None = None, **kwargs) -> Task:
    """``Task.from_model`` of the trained ``arch`` on its digits data."""
    xtr, ytr, xva, yva, xte, yte = data(arch)
    if arch in HF:
        kwargs.setdefault("output", "logits")
    return Task.from_model(trained(arch, steps), train=(xtr, ytr), val=(xva, yva), test=(xte, yte),
                           name=f"user-{arch}", **kwargs)


# ``--task tests._archs:<arch>_task`` for the CLI
def vit_task() -> Task:
    return task("vit")


def bert_task() -> Task:
    return task("bert")


def distilbert_task() -> Task:
    return task("distilbert")


def tokens_task() -> Task:
    return task("tokens")


def mobilenet_v3_task() -> Task:
    return task("mobilenet_v3")


def mlp_bn_task() -> Task:
    return task("mlp_bn")
