"""NIfTI in and out (nibabel), canonical orientation, intensity normalisation, back to the scan's grid.

Volumes are processed in the closest canonical orientation (RAS+), so that "axis 2" means axial
whatever the file's own orientation (LPS BraTS, PSR cord T2, ...). Outputs go back to the file's own
voxel order and are written with its own affine and header, so they overlay the scan exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import warnings

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from .atomic import atomic_write
from .errors import UUDSError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS = axcodes2ornt(("R", "A", "S"))


def volume_name(path: str | Path) -> str:
    """File name without .nii / .nii.gz."""
    name = Path(path).name
    for suf in (".nii.gz", ".nii"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


@dataclass
class Volume:
    """A 3D scan in canonical (RAS+) voxel order plus what is needed to go back to the file's grid."""

    data: np.ndarray  # float32, canonical order
    affine: np.ndarray  # the file's own affine
    header: nib.Nifti1Header
    ornt: np.ndarray  # the file's orientation (nibabel ornt)
    path: str = ""
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the canonical axes."""
        zooms = np.linalg.norm(np.asarray(self.affine, dtype=float)[:3, :3], axis=0)  # the affine, not pixdim
        perm = self.ornt[:, 0].astype(int)  # file axis i -> canonical axis perm[i]
        out = np.empty(3)
        out[perm] = zooms
        return tuple(float(z) for z in out)

    @property
    def axcodes(self) -> tuple[str, ...]:
        return nib.aff2axcodes(self.affine)

    def file_shape(self, canonical_shape: tuple[int, ...] | None = None) -> tuple[int, int, int]:
        """Shape in the file's own voxel order of a canonical-order array (default: this volume's data)."""
        shape = self.data.shape if canonical_shape is None else canonical_shape
        return tuple(int(shape[int(c)]) for c in self.ornt[:, 0])  # file axis i is canonical axis ornt[i, 0]

    def to_file_order(self, arr: np.ndarray) -> np.ndarray:
        """Canonical voxel order -> the file's own voxel order (exact: flips and transposes only)."""
        return apply_orientation(arr, ornt_transform(_RAS, self.ornt))


def _load_nifti(path: str | Path) -> nib.Nifti1Image:
    p = Path(path)
    if not p.exists():
        raise UUDSError("file not found", p)
    if p.is_dir():
        raise UUDSError("is a folder, not a NIfTI file", p)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises ImageFileError, gzip errors, ...
        raise UUDSError(f"not a readable NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", p) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UUDSError(f"not a NIfTI file (nibabel read it as {type(img).__name__})", p)
    return img


def _as_3d(img: nib.Nifti1Image, path: str | Path) -> np.ndarray:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UUDSError(f"expected a 3D volume, got shape {tuple(img.shape)} ({len(img.shape)}D)", path)
    if min(shape) < 2:
        raise UUDSError(f"volume of shape {tuple(img.shape)} is not 3D (a dimension of size 1)", path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)  # applies scl_slope/inter
    except Exception as exc:
        raise UUDSError(f"could not read the voxel data ({type(exc).__name__}: {exc})", path) from None
    return data


def load_volume(path: str | Path, *, check_constant: bool = True) -> Volume:
    """Read an image volume, validate it, return it in canonical order (float32, raw intensities)."""
    img = _load_nifti(path)
    data = _as_3d(img, path)
    if not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise UUDSError(f"{n} voxels are NaN or Inf", path)
    if check_constant and float(data.max()) == float(data.min()):
        raise UUDSError(f"constant image (every voxel is {float(data.min()):g})", path)
    if not np.isfinite(img.affine).all() or abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
        raise UUDSError("degenerate affine (a zero or non-finite axis): the scan's geometry is unusable", path)
    ornt = io_orientation(img.affine)
    if np.isnan(ornt).any():
        raise UUDSError("affine has no clear axis orientation", path)
    _warn_oddities(img, data.shape, path)
    canon = apply_orientation(data, ornt_transform(ornt, _RAS))
    return Volume(np.ascontiguousarray(canon, dtype=np.float32), img.affine.copy(), img.header.copy(), ornt,
                  str(path), volume_name(path))


#: a volume smaller than this along any axis gets a warning: its slices are mostly interpolation
SMALL_SIDE = 8


def _warn_oddities(img: nib.Nifti1Image, shape: tuple[int, ...], path: str | Path) -> None:
    """Say what is legal but probably not meant: a qform and an sform that disagree, a very small volume."""
    q, qc = img.header.get_qform(coded=True)
    s, sc = img.header.get_sform(coded=True)
    if q is not None and s is not None and qc and sc and not np.allclose(q, s, atol=1e-3):
        diff = float(np.abs(np.asarray(q) - np.asarray(s)).max())
        warnings.warn(f"{path}: its qform and sform disagree (by up to {diff:.3g} mm); the sform is used, as nibabel "
                      "does, and the outputs carry both as they are", UserWarning, stacklevel=3)
    if min(shape) < SMALL_SIDE:
        warnings.warn(f"{path}: a small volume ({' x '.join(map(str, shape))} voxels); its slices are mostly "
                      "interpolation at the model's size", UserWarning, stacklevel=3)


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """'1:1,3:1,2:2,4:3' -> {1: 1, 3: 1, 2: 2, 4: 3} (raises UUDSError on bad syntax)."""
    if not text:
        return None
    out: dict[int, int] = {}
    for part in text.replace(" ", "").split(","):
        try:
            k, v = part.split(":")
            out[int(k)] = int(v)
        except ValueError:
            raise UUDSError(f"--label-map: '{part}' is not VALUE:CLASS (e.g. '1:1,3:1,2:2,4:3')") from None
        if out[int(k)] < 0 or int(k) < 0:
            raise UUDSError(f"--label-map: negative value in '{part}'")
    return out


def remap_labels(lab: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """Map label values to classes (values not in the map become background 0)."""
    lut = np.zeros(int(max(int(lab.max()), max(label_map))) + 1, np.uint8)
    for k, v in label_map.items():
        lut[k] = v
    return lut[lab]


def load_label(path: str | Path, n_classes: int | None = None, *, binarize: bool = False,
               like: Volume | None = None, allow_empty: bool = False,
               label_map: dict[int, int] | None = None) -> Volume:
    """Read a label volume: near-integer values are rounded (masks stored as 0.99999997 are 1).

    ``n_classes`` counts foreground classes; values must lie in 0..n_classes. ``binarize`` maps every
    non-zero value to 1 (BraTS whole tumour = seg > 0); ``label_map`` maps values to classes (BraTS
    sub-regions: {1: 1, 3: 1, 2: 2, 4: 3}). ``like`` checks shape and affine against the image.
    """
    vol = load_volume(path, check_constant=False)
    data = vol.data
    rounded = np.rint(data)
    if np.abs(data - rounded).max() > 1e-3:
        raise UUDSError("label volume holds non-integer values (is this an image, not a mask?)", path)
    if rounded.min() < 0:
        raise UUDSError(f"label volume holds negative values ({int(rounded.min())})", path)
    lab = rounded.astype(np.uint8 if rounded.max() < 256 else np.int32)
    if label_map:
        lab = remap_labels(lab, label_map)
    if binarize:
        lab = (lab > 0).astype(np.uint8)
    if like is not None:
        check_same_grid(like, vol, path)
    if not allow_empty and not lab.any():
        raise UUDSError("label volume is empty (no foreground voxel)", path)
    if n_classes is not None:
        present = sorted(int(v) for v in np.unique(lab) if v > 0)
        bad = [v for v in present if v > n_classes]
        if bad:
            raise UUDSError(
                f"label values {bad} do not match the {n_classes} class name(s) given (values 1..{n_classes} "
                f"expected; pass one --class-name per label value, or --binarize-labels)", path)
    vol.data = lab
    return vol


def check_same_grid(image: Volume, label: Volume, label_path: str | Path) -> None:
    ishape = image.file_shape() if image.data.ndim == 3 else None
    lshape = label.file_shape()
    if ishape != lshape:
        raise UUDSError(f"shape {lshape} does not match its image {Path(image.path).name} {ishape}", label_path)
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        raise UUDSError(f"affine does not match its image {Path(image.path).name} "
                        f"(orientation {''.join(label.axcodes)} vs {''.join(image.axcodes)})", label_path)


@dataclass
class NormParams:
    lo: float
    hi: float

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Clip and map to [-1, 1], in one float32 array (the same arithmetic, in place, as the plain expression
        ``((clip(data) - lo) / (hi - lo)) * 2 - 1``: a large scan is not copied four times)."""
        out = np.clip(np.asarray(data, dtype=np.float32), self.lo, self.hi)
        out -= self.lo
        out /= max(self.hi - self.lo, 1e-8)
        out *= 2.0
        out -= 1.0
        return out

    def invert(self, data: np.ndarray) -> np.ndarray:
        return ((np.asarray(data, dtype=np.float32) + 1.0) / 2.0 * (self.hi - self.lo) + self.lo).astype(np.float32)


def normalisation_params(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> NormParams:
    """Percentile clipping range of one volume, computed on its foreground.

    Background is the most frequent value when it fills over 10 % of the volume and lies at the low
    end of the range (0 in raw scans, the volume minimum in z-scored BraTS, a negative constant in
    MNI-space scans): percentiles ignore it, so a large empty field does not pull them onto it.
    """
    flat = data.ravel()
    sub = flat[:: max(1, flat.size // 1_000_000)]
    vals, counts = np.unique(sub, return_counts=True)
    bg_val = vals[counts.argmax()]
    is_bg = counts.max() / sub.size > 0.10 and bg_val <= np.percentile(sub, 5)
    fg = flat[flat != bg_val] if is_bg else flat
    own = is_bg and fg.size > 0  # fg is a copy: the percentiles may sort it in place (no second copy)
    if fg.size == 0:
        fg = flat
    lo, hi = (float(v) for v in np.percentile(fg, [low, high], overwrite_input=own))
    if is_bg:
        lo = min(lo, float(bg_val))
    if hi <= lo:
        hi = float(flat.max())
    return NormParams(lo, hi)


def normalise(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[np.ndarray, NormParams]:
    """Clip at the low/high percentiles and map linearly to [-1, 1] (background -> -1)."""
    p = normalisation_params(data, low, high)
    return p.apply(data), p


def save_like(arr: np.ndarray, ref: Volume, out: str | Path, *, canonical: bool = True,
              dtype: np.dtype | type | None = None) -> Path:
    """Write ``arr`` on ``ref``'s own grid (voxel order, affine, header), atomically.

    ``canonical``: ``arr`` is in canonical order (as the engine works) and is put back in file order.
    """
    out = Path(out)
    if not any(out.name.endswith(s) for s in NIFTI_SUFFIXES):
        raise UUDSError("output must end in .nii or .nii.gz", out)
    data = ref.to_file_order(arr) if canonical else np.asarray(arr)
    dtype = np.dtype(dtype or data.dtype)
    hdr = ref.header.copy()
    hdr.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ref.affine, header=hdr)  # no copy when the type is right
    img.header.set_slope_inter(1.0, 0.0)
    qform, qcode = ref.header.get_qform(coded=True)
    sform, scode = ref.header.get_sform(coded=True)
    img.set_qform(qform if qform is not None else ref.affine, code=int(qcode or 0) or (0 if qform is not None else 1))
    img.set_sform(sform if sform is not None else ref.affine, code=int(scode or 0) or (0 if sform is not None else 1))
    atomic_write(out, lambda tmp: nib.save(img, tmp), suffix=".nii.gz" if out.name.endswith(".nii.gz") else ".nii")
    return out
