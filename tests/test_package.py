import subprocess
import sys

import napari_unet


def test_import_is_light():
    """`import napari_unet` must not pull in torch, Qt or napari."""
    code = (
        "import sys, napari_unet; "
        "heavy = [m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_public_api_resolves():
    for name in napari_unet.__all__:
        assert getattr(napari_unet, name) is not None, name


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-unet")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Train U-Net", "Segment", "Weight map"}
    menu = manifest.contributions.menus["napari/layers/segment"]
    menu_commands = {item.command for item in menu}
    assert {w.command for w in manifest.contributions.widgets} <= menu_commands


def test_public_functions_are_not_shadowed_by_submodules():
    """Importing the engine modules first must not replace the public functions."""
    code = (
        "import napari_unet.inference, napari_unet.training, napari_unet.weights; "
        "import inspect; from napari_unet import predict, segment, train, weight_map; "
        "assert all(map(inspect.isfunction, (predict, segment, train, weight_map)))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
