"""File dialogs for model files (module functions, so tests can replace them)."""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog, QWidget

MODEL_SUFFIX = ".safetensors"
MODEL_FILTER = f"U-Net model (*{MODEL_SUFFIX});;All files (*)"
#: what "Load model" opens: our model files and bioimage.io packages (zip)
OPEN_FILTER = (
    f"U-Net model or bioimage.io package (*{MODEL_SUFFIX} *.zip);;"
    f"U-Net model (*{MODEL_SUFFIX});;bioimage.io package (*.zip);;All files (*)"
)


def ask_open_model(parent: QWidget | None) -> str | None:
    """Ask for a model file or bioimage.io package (zip) to load; None when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Load U-Net model", "", OPEN_FILTER)
    return path or None


def ask_save_model(parent: QWidget | None, suggestion: str = "unet" + MODEL_SUFFIX) -> str | None:
    """Ask where to save the model; None when the user cancels."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save U-Net model", suggestion, MODEL_FILTER)
    if path and not path.endswith(MODEL_SUFFIX) and "." not in path.rsplit("/", 1)[-1]:
        path += MODEL_SUFFIX
    return path or None


PACKAGE_FILTER = "bioimage.io package (*.zip);;All files (*)"


def ask_export_package(parent: QWidget | None, suggestion: str = "unet.zip") -> str | None:
    """Ask where to write a bioimage.io package (the dialog asks before replacing a
    file); None when the user cancels."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Export to bioimage.io", suggestion, PACKAGE_FILTER
    )
    if path and not path.lower().endswith(".zip"):
        path += ".zip"
    return path or None


def confirm_replace(parent: QWidget | None, what: str) -> bool:
    """Ask whether ``what`` (e.g. "labels/unet in scan.ome.zarr") may be replaced; the
    default answer is No."""
    from qtpy.QtWidgets import QMessageBox

    buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
    answer = QMessageBox.question(
        parent,
        "Replace labels?",
        f"{what} already exists. Replace it? Its labels will be lost.",
        buttons,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_continue_or_replace(parent: QWidget | None, what: str) -> str | None:
    """Ask what to do with ``what`` (unfinished labels, e.g. of a cancelled run):
    "continue" (the default), "replace", or None (cancel)."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(parent)
    box.setWindowTitle("Unfinished labels")
    box.setText(
        f"{what} was begun and not finished. Continue it (the blocks already written are "
        "kept; the same model and settings are needed) or replace it?"
    )
    answers = {
        box.addButton("Continue", QMessageBox.ButtonRole.AcceptRole): "continue",
        box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole): "replace",
        box.addButton(QMessageBox.StandardButton.Cancel): None,
    }
    box.setDefaultButton(next(iter(answers)))
    box.exec()
    return answers.get(box.clickedButton())
