"""Build of gru4rec_ext._C: the CPU kernels always, the CUDA kernels when possible.

Switches (environment variables):
  FORCE_CUDA=1          build the CUDA kernels even if no GPU is visible (needs nvcc and a CUDA build of torch)
  FORCE_CUDA=0 / GRU4REC_NO_CUDA=1  never build them
  TORCH_CUDA_ARCH_LIST  architectures, default "9.0+PTX" (sm_90 code plus PTX that newer GPUs JIT)
  MAX_JOBS              parallel compile jobs (honoured by torch's ninja build)
  GRU4REC_DEBUG=1       -O0 -g
  GRU4REC_NO_EMU=1      skip the test-only module gru4rec_ext._cuda_emu (the CUDA kernels compiled for
                        the host emulation of csrc/emu/cuda_emu.h; plain C++, built by default so
                        that the tests run every CUDA kernel on the CPU)

Build with `pip install --no-build-isolation .`: an isolated build environment would install a
second, possibly different torch to compile against, and the extension's ABI must match the torch
that imports it.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# torch derives CUDA_HOME from the nvcc on PATH when unset; a wrapper such as /usr/local/bin/nvcc
# then points it at /usr/local, which has no CUDA libraries. Prefer the standard toolkit folder.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and \
        os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("gru4rec-ext: torch must be installed before building; use "
             "`pip install --no-build-isolation .` (see README, 'Install').")

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def want_cuda():
    if _env_flag("GRU4REC_NO_CUDA"):
        return False
    force = _env_flag("FORCE_CUDA")
    if force is False:
        return False
    if torch.version.cuda is None:
        if force:
            print("gru4rec-ext: FORCE_CUDA=1 but this torch is a CPU build; building CPU kernels only",
                  file=sys.stderr)
        return False
    nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    nvcc = nvcc or shutil.which("nvcc") is not None
    if not nvcc:
        if force:
            sys.exit("gru4rec-ext: FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return False
    return bool(force) or torch.cuda.is_available()


def pip_cuda_include_dirs():
    """Headers (cuBLAS, cuSPARSE, ...) that the pip `nvidia-*` packages of a CUDA torch ship."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    seen, out = set(), []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def extension():
    debug = bool(_env_flag("GRU4REC_DEBUG"))
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # C++20 (std::type_identity, std::atomic wait/notify): torch >= 2.13 picks it by itself, but
    # older cpp_extensions append -std=c++17 unless a standard is given (seen with torch 2.11).
    std = ["-std=c++20"]
    cxx = opt + std + ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        # CUDA_HOME may lack cuBLAS/cuSPARSE headers that ATen's CUDA headers include.
        have = CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "include", "cublas_v2.h"))
        if not have:
            include_dirs += pip_cuda_include_dirs()
        define_macros.append(("WITH_CUDA", None))
        nvcc = opt + std + ["--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension("gru4rec_ext._C", sources, include_dirs=include_dirs,
                             define_macros=define_macros,
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                             extra_link_args=["-fopenmp"])
    return CppExtension("gru4rec_ext._C", sources, include_dirs=include_dirs,
                        define_macros=define_macros, extra_compile_args={"cxx": cxx},
                        extra_link_args=["-fopenmp"])


def emulation_extension():
    """gru4rec_ext._cuda_emu: our CUDA kernels and launch code compiled by the host compiler under
    the CUDA emulation (csrc/emu), registered as torch.ops.gru4rec_emu.* for CPU tensors."""
    debug = bool(_env_flag("GRU4REC_DEBUG"))
    opt = ["-O0", "-g"] if debug else ["-O2", "-g0"]  # -g0: no debug info, half the compile time
    return CppExtension("gru4rec_ext._cuda_emu", sorted(glob.glob("csrc/emu/*.cpp")),
                        include_dirs=[os.path.join(HERE, "csrc")],
                        define_macros=[("TORCH_EXTENSION_NAME", "_cuda_emu"),
                                       ("GRU4REC_CUDA_EMU", None)],
                        extra_compile_args={"cxx": opt + ["-std=c++20", "-Wno-unknown-pragmas"]})


def extensions():
    exts = [extension()]
    if not _env_flag("GRU4REC_NO_EMU"):
        exts.append(emulation_extension())
    return exts


setup(
    packages=find_packages(include=["gru4rec_ext", "gru4rec_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
