"""Offline evaluation: export to torchvision, kNN sweep, linear evaluation of a frozen backbone."""

import json
from pathlib import Path

import lightning as L

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from hardcl_lightning.cli import build_cli, eval_main
from hardcl_lightning.evaluation import LinearEval, export_backbone, knn_sweep, linear_accuracy_on_features, load_pretrained_backbone
from hardcl_lightning.methods import SimCLR

REPO = Path(__file__).resolve().parents[1]


def save_method_checkpoint(model: nn.Module, path, compiled_keys: bool = False) -> None:
    """What Lightning writes for a method: its state dict and hyper-parameters."""
    state = model.state_dict()
    if compiled_keys:  # torch.compile'd module names its weights backbone._orig_mod.*
        state = {k.replace("backbone.", "backbone._orig_mod.", 1): v for k, v in state.items()}
    hp = dict(model.hparams, _class_path=f"hardcl_lightning.methods.{type(model).__name__}")
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)


def shuffle_bn_stats(model: nn.Module) -> None:
    """Non-trivial BN running statistics, so a forgotten buffer would change the features."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("compiled_keys", [False, True])
def test_exported_resnet18_loads_into_plain_torchvision_and_reproduces_features(tmp_path, compiled_keys):
    model = SimCLR(backbone="resnet18", cifar_stem=True, proj_hidden_dim=32, proj_output_dim=16)
    shuffle_bn_stats(model.backbone)
    save_method_checkpoint(model, tmp_path / "m.ckpt", compiled_keys)
    meta = export_backbone(tmp_path / "m.ckpt", tmp_path / "out" / "backbone.pth")
    assert json.loads((tmp_path / "out" / "backbone.pth.json").read_text()) == meta and meta["cifar_stem"]

    # built from torchvision alone, as a user without this library would
    plain = torchvision.models.resnet18()
    plain.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    plain.maxpool = nn.Identity()
    plain.fc = nn.Identity()
    plain.load_state_dict(torch.load(tmp_path / "out" / "backbone.pth", weights_only=True))  # strict
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), model.backbone(x), atol=1e-5)


def test_exported_vit_loads_into_plain_torchvision_vision_transformer(tmp_path):
    model = SimCLR(backbone="vit_tiny", image_size=32, backbone_kwargs={"patch_size": 8}, proj_hidden_dim=32, proj_output_dim=16)
    save_method_checkpoint(model, tmp_path / "m.ckpt")
    meta = export_backbone(tmp_path / "m.ckpt", tmp_path / "vit.pth")
    assert (meta["image_size"], meta["patch_size"], meta["num_heads"], meta["hidden_dim"]) == (32, 8, 3, 192)
    plain = torchvision.models.VisionTransformer(32, 8, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
    plain.heads = nn.Identity()
    plain.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), model.backbone(x), atol=1e-5)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_pretrained_backbone(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.ckpt"):
        load_pretrained_backbone(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {"gan.generator.w": torch.zeros(1)}, "hyper_parameters": {"latent_dim": 8}}, tmp_path / "gan.ckpt")
    with pytest.raises(ValueError, match="has no backbone"):
        export_backbone(tmp_path / "gan.ckpt", tmp_path / "x.pth")


def test_knn_sweep_k1_is_the_nearest_neighbour_label():
    g = torch.Generator().manual_seed(0)
    bank, bank_y = torch.randn(60, 8, generator=g), torch.randint(0, 4, (60,), generator=g)
    query, query_y = torch.randn(25, 8, generator=g), torch.randint(0, 4, (25,), generator=g)
    rows = knn_sweep(bank, bank_y, query, query_y, 4, ks=[1, 5], temperatures=[0.1, 0.5])
    assert [(r["k"], r["temperature"]) for r in rows] == [(1, 0.1), (1, 0.5), (5, 0.1), (5, 0.5)]
    # naive reference: for each query, the label of the bank entry with the largest cosine
    correct = 0
    for q, y in zip(query, query_y):
        sims = [F.cosine_similarity(q, b, dim=0) for b in bank]
        correct += int(bank_y[int(torch.stack(sims).argmax())] == y)
    assert rows[0]["acc"] == pytest.approx(correct / 25) and rows[1]["acc"] == pytest.approx(correct / 25)
    # naive weighted vote for k=5: the 5 largest cosines each add exp(cos / T) to their class
    for t, row in zip([0.1, 0.5], rows[2:]):
        hits = 0
        for q, y in zip(query, query_y):
            sims = torch.stack([F.cosine_similarity(q, b, dim=0) for b in bank])
            order = sims.argsort(descending=True)[:5]
            score = [sum(float(torch.exp(sims[i] / t)) for i in order if int(bank_y[i]) == c) for c in range(4)]
            hits += int(max(range(4), key=lambda c: score[c]) == int(y))
        assert row["acc"] == pytest.approx(hits / 25)
    small_chunks = knn_sweep(bank, bank_y, query, query_y, 4, ks=[1, 5], temperatures=[0.1, 0.5], chunk_size=7)
    assert [r["acc"] for r in small_chunks] == [r["acc"] for r in rows]  # chunking changes nothing
    with pytest.raises(ValueError, match="at least one k"):
        knn_sweep(bank, bank_y, query, query_y, 4, ks=[], temperatures=[0.1])
    with pytest.raises(ValueError, match=r"temperatures=\[0.0\]"):
        knn_sweep(bank, bank_y, query, query_y, 4, ks=[1], temperatures=[0.0])


class ClassifierAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.at_start = pl_module.classifier[1].weight.detach().clone()


def test_linear_accuracy_on_features_separates_blobs_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    y, vy = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (200,), generator=g)
    x, vx = centres[y] + torch.randn(400, 16, generator=g), centres[vy] + torch.randn(200, 16, generator=g)
    assert linear_accuracy_on_features(x, y, vx, vy, 4) == 1.0
    shuffled = y[torch.randperm(400, generator=g)]  # labels unrelated to the features: chance on held-out data
    assert linear_accuracy_on_features(x, shuffled, vx, vy, 4) < 0.45


@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory):
    """A real `hardcl fit` of the tiny SimCLR (a few steps on the embedded dataset)."""
    root = tmp_path_factory.mktemp("pre")
    build_cli(["fit", "--config", f"{REPO}/configs/tiny/simclr.yaml", "--trainer.max_steps=6", f"--trainer.default_root_dir={root}",
               "--trainer.logger=false", "--trainer.callbacks=[]", "--data.init_args.num_train=600",
               "--data.init_args.num_val=200", "--data.init_args.num_workers=0", "--resume=never"])
    return next(root.rglob("*.ckpt"))


def test_linear_eval_trains_only_the_classifier_and_keeps_bn_statistics(pretrained_ckpt, tmp_path, caplog):
    caplog.set_level("INFO")
    cli = build_cli(["--config", f"{REPO}/configs/tiny/linear_eval.yaml", f"--model.pretrained={pretrained_ckpt}", "--trainer.max_epochs=2",
                     f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--data.init_args.num_train=600",
                     "--data.init_args.num_val=200"], run=False)
    model: LinearEval = cli.model
    assert cli.datamodule.num_views == 1  # linked from the model: one crop + flip view
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    snapshot = ClassifierAtStart()
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(model, cli.datamodule)  # the classifier is built in setup (classes from the datamodule)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert (model.classifier[1].weight - snapshot.at_start).abs().max() > 1e-3
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["linear/val_acc"]) <= float(metrics["linear/val_acc5"]) <= 1.0
    assert "[linear eval] epoch 2: top-1" in caplog.text


def test_linear_eval_learns_a_linearly_separable_task_as_well_as_logistic_regression(pretrained_ckpt, image_folder, tmp_path):
    """Three classes that differ in one saturated colour channel: the frozen features separate
    them, so the protocol must reach what an independent full-batch logistic regression on the
    same features reaches on the validation images."""
    from hardcl_lightning.callbacks.features import extract_features

    data = ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={image_folder / 'train'}",
            f"--data.val_dir={image_folder / 'val'}", "--data.batch_size=6", "--data.num_workers=0", "--data.image_size=32",
            "--data.augmentation=none"]
    cli = build_cli(["--config", f"{REPO}/configs/tiny/linear_eval.yaml", f"--model.pretrained={pretrained_ckpt}", "--trainer.max_epochs=30",
                     f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                     *data], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    got = float(cli.trainer.callback_metrics["linear/val_acc"])
    f, y = extract_features(cli.model, cli.datamodule.bank_dataloader(), gather=False)
    vf, vy = extract_features(cli.model, cli.datamodule.val_dataloader(), gather=False)
    mu, sd = f.mean(0), f.std(0) + 1e-5
    w = torch.zeros(f.shape[1], 3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy((f - mu) / sd @ w + b, y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    reference = (((vf - mu) / sd @ w + b).argmax(1) == vy).float().mean().item()
    assert reference >= 0.9 and got >= reference - 0.1, (got, reference)


def test_hardcl_eval_knn_and_export_commands(pretrained_ckpt, tmp_path, capsys):
    eval_main(["knn", "--config", f"{REPO}/configs/tiny/knn_sweep.yaml", f"--pretrained={pretrained_ckpt}",
               "--data.init_args.num_train=600", "--data.init_args.num_val=200", f"--output={tmp_path / 'knn.json'}"])
    rows = json.loads((tmp_path / "knn.json").read_text())
    assert len(rows) == 6 and all(0 <= r["acc"] <= 1 for r in rows)
    assert "best: k=" in capsys.readouterr().out
    eval_main(["export", f"--pretrained={pretrained_ckpt}", f"--output={tmp_path / 'b.pth'}"])
    backbone, _, _ = load_pretrained_backbone(pretrained_ckpt)
    state = torch.load(tmp_path / "b.pth", weights_only=True)
    assert state.keys() == backbone.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items())


def test_the_cifar10_evaluation_configs_run_on_an_image_folder(pretrained_ckpt, image_folder, tmp_path, monkeypatch):
    """configs/linear_eval_cifar10.yaml and configs/knn_sweep_cifar10.yaml, pointed at an ImageFolder tree on CPU."""
    monkeypatch.chdir(tmp_path)
    data = ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={image_folder / 'train'}",
            f"--data.val_dir={image_folder / 'val'}", "--data.batch_size=4", "--data.num_workers=0"]
    cli = build_cli(["fit", "--config", f"{REPO}/configs/linear_eval_cifar10.yaml", f"--model.pretrained={pretrained_ckpt}",
                     "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.fast_dev_run=true", *data])
    assert isinstance(cli.model, LinearEval) and cli.datamodule.view_specs[0].jitter_prob == 0
    eval_main(["knn", "--config", f"{REPO}/configs/knn_sweep_cifar10.yaml", f"--pretrained={pretrained_ckpt}", *data,
               "--k=[1, 3]", "--temperature=[0.1]", f"--output={tmp_path / 'k.json'}"])
    assert len(json.loads((tmp_path / "k.json").read_text())) == 2
    with pytest.raises(SystemExit):  # the checkpoint is required, and the error names it
        build_cli(["fit", "--config", f"{REPO}/configs/linear_eval_cifar10.yaml", *data])
