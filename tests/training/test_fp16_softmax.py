"""Training in float16 keeps the attention softmax in float32 (issue 4).

With ``compute_dtype`` float16 the recipes run the model under autocast with a gradient scaler;
the attention probabilities must still be computed in float32, or long rows lose their small
weights. The eager kernel does this by asking ``softmax`` for float32 explicitly; this test
records the dtype every softmax of a float16 forward ran in, through the recipe's own model
loading and autocast (``models.load_base`` / ``models.autocast``), and compares the float16
logits with a float32 forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from synthetic import make_settings

from services.training.model import load as models


def test_eager_attention_softmax_runs_in_float32_under_fp16_training(tiny_random, monkeypatch):
    settings = make_settings(tiny_random, compute_dtype="float16", attention="eager")
    device = torch.device("cpu")
    model = models.load_base(settings, device).eval()
    seen: list[torch.dtype] = []
    real_softmax = F.softmax

    def recording_softmax(x, dim=None, _stacklevel=3, dtype=None):
        out = real_softmax(x, dim=dim, dtype=dtype)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "softmax", recording_softmax)
    ids = torch.randint(3, 200, (2, 48))
    with torch.no_grad(), models.autocast(settings, device):
        half = model(input_ids=ids).logits
    monkeypatch.undo()
    layers = model.config.num_hidden_layers
    assert len(seen) >= layers and set(seen) == {torch.float32}
    assert half.dtype == torch.float16  # autocast really ran the matmuls in float16
    reference = models.load_base(make_settings(tiny_random, attention="eager"), device).eval()
    with torch.no_grad():
        full = reference(input_ids=ids).logits
    assert torch.allclose(half.float(), full, atol=5e-2, rtol=0)
