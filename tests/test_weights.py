"""Weight loading: ImageNet (Keras cache), matterport .h5, our model folders, tarballs, S3."""

import os
import tarfile

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from casting.config import Config  # noqa: E402
from casting.model import MaskRCNN, save_model_dir  # noqa: E402
from casting.model import weights as W  # noqa: E402

HEADS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")
EXCLUDE = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


def _config(n_classes):
    return Config(image_size=64, class_names=tuple(f"c{i}" for i in range(n_classes)))


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))


def _arrays(model):
    return {n: [np.array(w) for w in layer.get_weights()]
            for n, layer in model.named_layers().items()}


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def source():
    """A 2-class (N=3) model with random, distinct weights."""
    model = MaskRCNN(_config(2))
    _randomize(model, 1)
    return model


@pytest.fixture(scope="module")
def target3():
    """A fresh N=3 model, shared (each test snapshots what it compares against)."""
    return MaskRCNN(_config(2))


@pytest.fixture(scope="module")
def target4():
    """An N=4 model: its class-dependent heads do not fit the source's."""
    return MaskRCNN(_config(3))


@pytest.fixture(scope="module")
def matterport_file(source, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mp") / "mask_rcnn_source.h5")
    W.save_matterport_h5(source, path)
    return path


# ---- names ----------------------------------------------------------------------------------
def test_keras_resnet_names_map_to_matterport():
    m = W.keras_resnet_to_matterport
    assert m("conv1_conv") == "conv1" and m("conv1_bn") == "bn_conv1"
    assert m("conv2_block1_1_conv") == "res2a_branch2a"
    assert m("conv2_block1_0_conv") == "res2a_branch1"
    assert m("conv2_block1_1_bn") == "bn2a_branch2a"
    assert m("conv3_block4_3_bn") == "bn3d_branch2c"
    assert m("conv4_block23_2_conv") == "res4w_branch2b"  # ResNet101's last stage-4 block
    assert m("conv5_block3_out") is None and m("pool1_pad") is None


# ---- ImageNet -------------------------------------------------------------------------------
def test_imagenet_from_the_keras_cache(tmp_path, monkeypatch, target3):
    from keras.src.legacy.saving import legacy_h5_format

    net = keras.applications.ResNet50(weights=None, include_top=False)
    rng = np.random.default_rng(0)
    for v in net.weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    # the layout of Keras' downloaded resnet50_..._notop.h5 (Keras 2 save_weights)
    with h5py.File(cache / W.imagenet_cache_filename("resnet50"), "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, net)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    model = target3
    before = _arrays(model)
    report = W.load_init_weights(model, "imagenet")
    expected = {}
    for layer in net.layers:
        name = W.keras_resnet_to_matterport(layer.name)
        if name:
            arrays = layer.get_weights()
            if name == "conv1":  # BGR-trained kernel made to read RGB
                arrays[0] = arrays[0][:, :, ::-1, :]
            expected[name] = arrays
    assert len(expected) == 106  # 53 convs + 53 BNs in ResNet50
    assert sorted(report.loaded) == sorted(expected)
    after = _arrays(model)
    for name, arrays in expected.items():
        assert _same(after[name], arrays), name
    for name in after:  # FPN, RPN and heads untouched
        if name not in expected:
            assert _same(after[name], before[name]), name
    assert "imagenet" in report.summary() or "keras imagenet" in report.summary()

    # the same weights saved by Keras 3 (.weights.h5) load identically
    k3 = str(tmp_path / "resnet50.weights.h5")
    net.save_weights(k3)
    for layer in model.named_layers().values():
        for v in layer.weights:
            v.assign(np.zeros(tuple(v.shape), "float32"))
    W.load_imagenet_backbone(model, k3)
    again = _arrays(model)
    assert all(_same(again[n], expected[n]) for n in expected)


def test_missing_imagenet_file_says_where_it_goes_and_the_cli_way_out(tmp_path, monkeypatch,
                                                                     target3):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    asked = {}

    def offline(fname, origin, **kwargs):  # what Keras raises when the download fails
        asked.update(kwargs, fname=fname, origin=origin)
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(W.WeightsError) as info:
        W.load_init_weights(target3, "imagenet")
    text = str(info.value)
    wanted = tmp_path / "keras_home" / "models" / W.imagenet_cache_filename("resnet50")
    assert f"Put the file at {wanted}" in text
    assert "--init-weights none" in text and "init_weights='none'" not in text
    folders = text.split("Keras cache (")[1].split(")")[0].split(", ")
    assert len(folders) == len(set(folders))  # each folder named once
    # the download is Keras' public get_file, into its cache, checked by the published MD5
    assert asked["fname"] == W.imagenet_cache_filename("resnet50")
    assert asked["origin"].endswith("/" + asked["fname"]) and asked["origin"].startswith("https://")
    assert asked["cache_subdir"] == "models" and len(asked["file_hash"]) == 32


# ---- matterport .h5 -------------------------------------------------------------------------
def test_matterport_layout_written(source, matterport_file):
    with h5py.File(matterport_file, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert "rpn_model" in names and "rpn_conv_shared" not in names
        assert {"conv1", "bn_conv1", "res2a_branch2a", "fpn_c5p5", "mrcnn_mask"} <= set(names)
        rpn = [w.decode() for w in f["rpn_model"].attrs["weight_names"]]
        assert rpn == [f"{n}/{w}:0" for n in W.RPN_LAYERS for w in ("kernel", "bias")]
        bn = [w.decode() for w in f["bn_conv1"].attrs["weight_names"]]
        assert bn == ["bn_conv1/gamma:0", "bn_conv1/beta:0", "bn_conv1/moving_mean:0",
                      "bn_conv1/moving_variance:0"]
        assert f["mrcnn_class_conv1"]["mrcnn_class_conv1/kernel:0"].shape == (7, 7, 256, 1024)
        assert f["mrcnn_mask"]["mrcnn_mask/kernel:0"].shape == (1, 1, 256, 3)
        assert f["rpn_model"]["rpn_class_raw/kernel:0"].shape == (
            1, 1, source.config.rpn_conv_channels, 6)


def test_matterport_by_name_with_exclude_loads_every_other_layer(source, matterport_file,
                                                                 target4):
    model = target4  # N=4: the class-dependent heads differ
    before = _arrays(model)
    report = W.load_init_weights(model, matterport_file, exclude=EXCLUDE)
    src, got = _arrays(source), _arrays(model)
    expected = sorted(n for n in got if n not in HEADS)
    assert sorted(report.loaded) == expected
    assert all(_same(got[n], src[n]) for n in expected)
    assert all(_same(got[n], before[n]) for n in HEADS)
    assert sorted(n for n, reason in report.skipped if reason == "excluded") == sorted(HEADS)
    assert report.missing == []


def test_class_dependent_heads_skipped_and_named(source, matterport_file, target4):
    model = target4
    report = W.load_init_weights(model, matterport_file)
    skipped = dict(report.skipped)
    assert sorted(skipped) == sorted(HEADS)
    assert all("class-dependent" in r and "N=3 in file" in r and "N=4 in model" in r
               for r in skipped.values())
    assert "mrcnn_class_logits" in report.summary()


def test_full_model_save_layout_and_same_classes(source, matterport_file, tmp_path, target3):
    # matterport's model.save(): layers under a `model_weights` group
    full = str(tmp_path / "full.h5")
    with h5py.File(matterport_file, "r") as src, h5py.File(full, "w") as dst:
        group = dst.create_group("model_weights")
        for key in src:
            src.copy(key, group)
        for key, value in src.attrs.items():
            group.attrs[key] = value
    model = target3
    report = W.load_init_weights(model, full)
    assert report.skipped == [] and len(report.loaded) == len(model.named_layers())
    src_arrays, got = _arrays(source), _arrays(model)
    assert all(_same(got[n], src_arrays[n]) for n in got)


def test_fc_kernel_stored_as_dense_is_reshaped(source, tmp_path, target3):
    """A box head saved with a Dense first layer ([12544, 1024], flattened y, x, channel)
    loads into the 7x7 convolution, and nested (TimeDistributed-style) names resolve."""
    kernel = np.asarray(source.named_layers()["mrcnn_class_conv1"].get_weights()[0])
    bias = np.asarray(source.named_layers()["mrcnn_class_conv1"].get_weights()[1])
    path = str(tmp_path / "dense_head.h5")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"mrcnn_class_conv1"]
        g = f.create_group("mrcnn_class_conv1")
        names = ["mrcnn_class_conv1/mrcnn_class_conv1/kernel:0",
                 "mrcnn_class_conv1/mrcnn_class_conv1/bias:0"]
        g.create_dataset(names[0], data=kernel.reshape(7 * 7 * 256, 1024))
        g.create_dataset(names[1], data=bias)
        g.attrs["weight_names"] = [n.encode() for n in names]
    model = target3
    report = W.load_init_weights(model, path)
    assert report.loaded == ["mrcnn_class_conv1"]
    got = model.named_layers()["mrcnn_class_conv1"].get_weights()
    assert np.array_equal(got[0], kernel) and np.array_equal(got[1], bias)
    assert "mrcnn_mask" in report.missing
    flat = W.by_name._fit_array(kernel, (12544, 1024))
    assert np.array_equal(flat[(3 * 7 + 5) * 256 + 17], kernel[3, 5, 17])  # row-major y, x, c


# ---- our model folder, tarball, S3 ----------------------------------------------------------
def test_model_folder_tarball_and_s3(source, tmp_path, monkeypatch, target3, target4):
    folder = str(tmp_path / "model")
    save_model_dir(source, folder, saved_model=False)
    src = _arrays(source)

    model = target3
    report = W.load_init_weights(model, folder)
    assert len(report.loaded) == len(src)
    assert all(_same(a, src[n]) for n, a in _arrays(model).items())

    # SageMaker's <output>/<job>/output/model.tar.gz holds the folder's files at its root
    tarball = str(tmp_path / "model.tar.gz")
    with tarfile.open(tarball, "w:gz") as tar:
        for name in os.listdir(folder):
            tar.add(os.path.join(folder, name), arcname=name)

    # another number of classes: loaded by name, heads skipped
    other = target4
    report = W.load_init_weights(other, tarball)
    assert sorted(n for n, _ in report.skipped) == sorted(HEADS)
    got = _arrays(other)
    assert all(_same(got[n], src[n]) for n in report.loaded)

    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bkt")
        s3.upload_file(tarball, "bkt", "out/job-1/output/model.tar.gz")
        for name in os.listdir(folder):
            s3.upload_file(os.path.join(folder, name), "bkt", f"models/m1/{name}")
        for uri in ("s3://bkt/out/job-1/output/model.tar.gz", "s3://bkt/models/m1"):
            for layer in model.named_layers().values():
                for v in layer.weights:
                    v.assign(np.zeros(tuple(v.shape), "float32"))
            report = W.load_init_weights(model, uri)
            assert len(report.loaded) == len(src), uri
            assert all(_same(a, src[n]) for n, a in _arrays(model).items()), uri
        with pytest.raises(W.WeightsError, match="s3://bkt/nothing/here"):
            W.load_init_weights(model, "s3://bkt/nothing/here")


# ---- none and errors ------------------------------------------------------------------------
def test_none_and_clear_errors(source, tmp_path):
    before = _arrays(source)
    report = W.load_init_weights(source, "none")
    assert report.loaded == [] and "loaded 0" in report.summary()
    assert all(_same(a, before[n]) for n, a in _arrays(source).items())

    missing = str(tmp_path / "nope.h5")
    with pytest.raises(W.WeightsError, match="nope.h5"):
        W.load_init_weights(source, missing)
    garbage = tmp_path / "garbage.h5"
    garbage.write_text("not hdf5")
    with pytest.raises(W.WeightsError, match="garbage.h5"):
        W.load_init_weights(source, str(garbage))
    odd = str(tmp_path / "odd.h5")
    with h5py.File(odd, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(W.WeightsError, match="odd.h5.*unrecognised"):
        W.load_init_weights(source, odd)
    unrelated = str(tmp_path / "unrelated.h5")
    with h5py.File(unrelated, "w") as f:
        f.attrs["layer_names"] = [b"dense_7"]
        g = f.create_group("dense_7")
        g.create_dataset("dense_7/kernel:0", data=np.zeros((2, 2)))
        g.attrs["weight_names"] = [b"dense_7/kernel:0"]
    with pytest.raises(W.WeightsError, match="unrelated.h5.*none of its 1 layers"):
        W.load_init_weights(source, unrelated)
