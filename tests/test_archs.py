"""The inference model tree is fastai's, key for key; BN folding keeps the outputs."""
import copy

import pytest
import torch

from models.archs import ARCHS, build_model, fold_batchnorm


@pytest.mark.parametrize("arch", list(ARCHS))
def test_inference_tree_matches_vision_learner(arch):
    from fastai.vision.learner import create_vision_model

    from training.learner import Backbone

    fastai_model = create_vision_model(Backbone(arch), 5, pretrained=False, cut=ARCHS[arch].cut).eval()
    ours = build_model(arch, 5).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in fastai_model.state_dict().items()}
    ours.load_state_dict(fastai_model.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), fastai_model(x), atol=1e-6)
        for module in fastai_model.modules():  # non-trivial statistics, so folding has something to fold
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        folded = fold_batchnorm(copy.deepcopy(fastai_model))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), fastai_model(x), atol=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])  # torchvision's others: PyTorch's 0.1 too
def test_running_statistics_follow_new_data_within_a_short_fine_tune(arch):
    """Fine-tuning is a few hundred steps: by step 30 the stem's running mean must have reached the new
    data's (efficientnet_lite0's TF momentum of 0.01 got a quarter of the way and ruined eval mode)."""
    model = build_model(arch, 5).train()
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    stem.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(dim=(0, 2, 3))))
    with torch.no_grad():
        for step in range(30):
            model(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(step)) * 4 + 3)
    target = torch.stack(seen[-10:]).mean(0)
    assert torch.allclose(stem.running_mean, target, rtol=0.1, atol=0.05), (stem.momentum, stem.running_mean[:4], target[:4])
