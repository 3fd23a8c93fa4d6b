"""Oxford-IIIT Pets and Oxford Flowers-102 from their official files, through torchvision's dataset classes.

torchvision exposes the parsed (image path, label) lists only as `_images`/`_image_files` and `_labels`;
reading them keeps the original JPEG bytes, which `dataset[i]` (a decoded PIL image) would lose.
"""

from __future__ import annotations

from torchvision.datasets import Flowers102, OxfordIIITPet

from data_pipelines.sources.base import Listing, Source, SourceRequest, file_items, require_files


class _Flowers102Files(Flowers102):
    """torchvision's reader with its md5 check of the .mat files replaced by the existence check made before
    (the md5 rejects re-packed copies and the tiny files tests write)."""

    def _check_integrity(self) -> bool:
        return True


def load_pets(request: SourceRequest) -> Listing:
    folder = request.root / "oxford-iiit-pet"
    require_files([folder / "images", folder / "annotations" / f"{request.split}.txt"], "pets")
    dataset = OxfordIIITPet(str(request.root), split=request.split, download=False)
    return Listing(file_items(zip(dataset._images, dataset._labels, strict=True)), list(dataset.classes))


def load_flowers102(request: SourceRequest) -> Listing:
    folder = request.root / "flowers-102"
    require_files([folder / "jpg", folder / "imagelabels.mat", folder / "setid.mat"], "flowers102")
    try:
        dataset = _Flowers102Files(str(request.root), split=request.split, download=False)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("flowers102 reads its .mat label files with scipy: pip install scipy") from error
    return Listing(file_items(zip(dataset._image_files, dataset._labels, strict=True)), list(dataset.classes))


PETS = Source(
    name="pets",
    summary="Oxford-IIIT Pets, 37 breeds, split lists from annotations/{trainval,test}.txt",
    layout="ROOT/oxford-iiit-pet/{images/*.jpg,annotations/trainval.txt,annotations/test.txt}",
    splits=("trainval", "test"),
    load=load_pets,
)
FLOWERS102 = Source(
    name="flowers102",
    summary="Oxford Flowers-102, labels and splits from imagelabels.mat and setid.mat (needs scipy)",
    layout="ROOT/flowers-102/{jpg/image_%05d.jpg,imagelabels.mat,setid.mat}",
    splits=("train", "val", "test"),
    load=load_flowers102,
)
