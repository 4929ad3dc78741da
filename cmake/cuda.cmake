# CUDA programs: train_gpt2cu / test_gpt2cu (bf16 activations and weights, fp32 master weights) and
# their fp32 twins train_gpt2cu_fp32 / test_gpt2cu_fp32 (every tensor in fp32, for parity at 1e-4).
#
# LLMC_CUDA (set in the top-level CMakeLists.txt):
#   AUTO  build them when nvcc and cuBLAS/cuBLASLt are found, else build the CPU parts only
#   ON    the same, but a missing nvcc or cuBLAS is a configure error
#   OFF   never
# cuBLAS/cuBLASLt come from the CUDA toolkit when it has them, else from NVIDIA's pip wheel
# (`pip install nvidia-cublas`: site-packages/nvidia/cu13/{include,lib}, or nvidia/cublas/... in the
# CUDA 12 wheels). The wheel ships only libcublas.so.13 / libcublasLt.so.13 (no unversioned
# symlinks), so we link those files by full path. LLMC_CUBLAS_ROOT=<dir with include/ and lib/>
# overrides the search. Sets LLMC_HAVE_CUDA.
set(LLMC_HAVE_CUDA OFF)
if(LLMC_CUDA STREQUAL "OFF")
  message(STATUS "llmc: LLMC_CUDA=OFF, building the CPU parts only")
  return()
endif()

function(llmc_cuda_unavailable why)
  if(LLMC_CUDA STREQUAL "ON")
    message(FATAL_ERROR "LLMC_CUDA=ON but ${why}")
  endif()
  message(STATUS "llmc: ${why}; building the CPU parts only (LLMC_CUDA=AUTO)")
endfunction()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  llmc_cuda_unavailable("no CUDA compiler (nvcc) was found")
  return()
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

# ---- cuBLAS / cuBLASLt ----------------------------------------------------------------------
set(LLMC_CUBLAS_ROOT "" CACHE PATH "Directory holding include/cublasLt.h and lib/libcublasLt.so*")
set(_llmc_cublas_inc "")
set(_llmc_cublas_lib "")
set(_llmc_cublaslt_lib "")

function(_llmc_find_cublas_in root)
  # looks for the header and the (possibly only versioned) shared libraries under root
  if(NOT EXISTS "${root}/include/cublasLt.h")
    return()
  endif()
  foreach(name cublas cublasLt)
    set(found "")
    foreach(dir "${root}/lib" "${root}/lib64" "${root}/targets/x86_64-linux/lib")
      file(GLOB candidates "${dir}/lib${name}.so" "${dir}/lib${name}.so.[0-9]*")
      list(SORT candidates)
      if(candidates)
        list(GET candidates 0 found)
        break()
      endif()
    endforeach()
    if(NOT found)
      return()
    endif()
    set(_lib_${name} "${found}")
  endforeach()
  set(_llmc_cublas_inc "${root}/include" PARENT_SCOPE)
  set(_llmc_cublas_lib "${_lib_cublas}" PARENT_SCOPE)
  set(_llmc_cublaslt_lib "${_lib_cublasLt}" PARENT_SCOPE)
endfunction()

if(LLMC_CUBLAS_ROOT)
  _llmc_find_cublas_in("${LLMC_CUBLAS_ROOT}")
  if(NOT _llmc_cublas_inc)
    llmc_cuda_unavailable("LLMC_CUBLAS_ROOT=${LLMC_CUBLAS_ROOT} holds no include/cublasLt.h + lib/libcublas*.so")
    return()
  endif()
elseif(TARGET CUDA::cublasLt AND TARGET CUDA::cublas AND EXISTS "${CUDAToolkit_INCLUDE_DIRS}/cublasLt.h")
  set(_llmc_cublas_source "the CUDA toolkit")
else()
  # NVIDIA's pip wheel, in the site-packages of whichever Python is at hand
  if(NOT Python_EXECUTABLE)
    find_package(Python 3 QUIET COMPONENTS Interpreter)
  endif()
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import nvidia, os; print(';'.join(os.path.join(p, d) for p in nvidia.__path__ for d in ('cu13', 'cublas', 'cu12')))"
      OUTPUT_VARIABLE _llmc_wheel_roots OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    foreach(root IN LISTS _llmc_wheel_roots)
      _llmc_find_cublas_in("${root}")
      if(_llmc_cublas_inc)
        break()
      endif()
    endforeach()
  endif()
  if(NOT _llmc_cublas_inc)
    llmc_cuda_unavailable("cuBLAS/cuBLASLt were found neither in the CUDA toolkit (${CUDAToolkit_INCLUDE_DIRS}) nor in a pip wheel (pip install nvidia-cublas)")
    return()
  endif()
endif()

if(_llmc_cublas_inc)
  set(_llmc_cublas_source "${_llmc_cublas_inc}/..")
  add_library(llmc_cublas INTERFACE)
  target_include_directories(llmc_cublas SYSTEM INTERFACE "${_llmc_cublas_inc}")
  target_link_libraries(llmc_cublas INTERFACE "${_llmc_cublaslt_lib}" "${_llmc_cublas_lib}")
  get_filename_component(_llmc_cublas_libdir "${_llmc_cublaslt_lib}" DIRECTORY)
  set(_llmc_cublas_rpath "${_llmc_cublas_libdir}")
else()
  add_library(llmc_cublas INTERFACE)
  target_link_libraries(llmc_cublas INTERFACE CUDA::cublasLt CUDA::cublas)
  set(_llmc_cublas_rpath "")
endif()
message(STATUS "llmc: building the CUDA programs; cuBLAS/cuBLASLt from ${_llmc_cublas_source}")
set(LLMC_HAVE_CUDA ON)

# ==== BEGIN LLMC_CUDNN: cuDNN attention (optional) ============================================
# -DLLMC_CUDNN=ON (default OFF) runs the bf16 engine's attention through cuDNN's fused SDPA
# (llmc/cudnn_attention.h, csrc/cudnn_attention.cpp) instead of llmc/attention.cuh, in
# train_gpt2cu, test_gpt2cu, profile_gpt2cu, the Python module _llmc_cuda and dev_cuda_attention
# (which then also checks and times cuDNN). The _fp32 twins never use it.
# Needs cuDNN 9 (cudnn.h + libcudnn.so[.9]) and the header-only cudnn-frontend (cudnn_frontend.h),
# looked up in this order:
#   cuDNN     CUDNN_INCLUDE_DIR / CUDNN_LIBRARY if given, the system paths
#             (/usr/include/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, the CUDA toolkit), then
#             NVIDIA's wheel (pip install nvidia-cudnn-cu13: site-packages/nvidia/cudnn/{include,lib})
#   frontend  CUDNN_FRONTEND_INCLUDE_DIR if given, the system paths, then the wheel
#             (pip install nvidia-cudnn-frontend: <site-packages>/include/cudnn_frontend.h)
# Everything cuDNN-related of the build is in this block. The programs are defined further down,
# so a deferred call (run at the end of the top-level CMakeLists.txt) adds -DLLMC_CUDNN and the
# cuDNN library to those of them that exist in this configuration (a pip build has no dev_cuda).
option(LLMC_CUDNN "Run the bf16 CUDA engine's attention through cuDNN (needs cuDNN 9 + cudnn-frontend)" OFF)
if(LLMC_CUDNN)
  if(NOT Python_EXECUTABLE)
    find_package(Python 3 QUIET COMPONENTS Interpreter)
  endif()
  set(_llmc_cudnn_wheel "")
  set(_llmc_site_include "")
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import sysconfig; print(sysconfig.get_paths()['purelib']); print(sysconfig.get_paths()['platlib'])"
      OUTPUT_VARIABLE _llmc_site OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    string(REPLACE "\n" ";" _llmc_site "${_llmc_site}")
    foreach(dir IN LISTS _llmc_site)
      list(APPEND _llmc_cudnn_wheel "${dir}/nvidia/cudnn")
      list(APPEND _llmc_site_include "${dir}/include")
    endforeach()
  endif()
  set(_llmc_cudnn_inc_paths /usr/include/x86_64-linux-gnu /usr/include ${CUDAToolkit_INCLUDE_DIRS})
  set(_llmc_cudnn_lib_paths /usr/lib/x86_64-linux-gnu /usr/lib64 ${CUDAToolkit_LIBRARY_DIR})
  foreach(root IN LISTS _llmc_cudnn_wheel)
    list(APPEND _llmc_cudnn_inc_paths "${root}/include")
    list(APPEND _llmc_cudnn_lib_paths "${root}/lib")
  endforeach()
  find_path(CUDNN_INCLUDE_DIR cudnn.h PATHS ${_llmc_cudnn_inc_paths}
            DOC "Directory holding cudnn.h (LLMC_CUDNN)")
  find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR PATHS ${_llmc_cudnn_lib_paths}
               DOC "libcudnn.so or libcudnn.so.9 (LLMC_CUDNN)")
  find_path(CUDNN_FRONTEND_INCLUDE_DIR cudnn_frontend.h PATHS /usr/include /usr/local/include ${_llmc_site_include}
            DOC "Directory holding cudnn_frontend.h (LLMC_CUDNN)")
  if(NOT CUDNN_INCLUDE_DIR OR NOT EXISTS "${CUDNN_INCLUDE_DIR}/cudnn_version.h" OR NOT CUDNN_LIBRARY
     OR NOT EXISTS "${CUDNN_LIBRARY}")
    message(FATAL_ERROR "LLMC_CUDNN=ON but cuDNN was not found (cudnn.h: '${CUDNN_INCLUDE_DIR}', libcudnn: "
                        "'${CUDNN_LIBRARY}'). Install it (apt: cudnn9-cuda-13 / libcudnn9-dev-cuda-13, or "
                        "pip install nvidia-cudnn-cu13) or pass -DCUDNN_INCLUDE_DIR=<dir with cudnn.h> "
                        "-DCUDNN_LIBRARY=<path of libcudnn.so>.")
  endif()
  if(NOT CUDNN_FRONTEND_INCLUDE_DIR OR NOT EXISTS "${CUDNN_FRONTEND_INCLUDE_DIR}/cudnn_frontend.h")
    message(FATAL_ERROR "LLMC_CUDNN=ON but cudnn-frontend was not found (cudnn_frontend.h: "
                        "'${CUDNN_FRONTEND_INCLUDE_DIR}'). It is header-only: pip install nvidia-cudnn-frontend, "
                        "or pass -DCUDNN_FRONTEND_INCLUDE_DIR=<dir with cudnn_frontend.h> (the include/ folder "
                        "of https://github.com/NVIDIA/cudnn-frontend).")
  endif()
  file(STRINGS "${CUDNN_INCLUDE_DIR}/cudnn_version.h" _llmc_v REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ")
  string(REGEX REPLACE ".*CUDNN_MAJOR ([0-9]+).*CUDNN_MINOR ([0-9]+).*CUDNN_PATCHLEVEL ([0-9]+).*" "\\1.\\2.\\3"
         _llmc_cudnn_version "${_llmc_v}")
  if(_llmc_cudnn_version VERSION_LESS 9.0)
    message(FATAL_ERROR "LLMC_CUDNN=ON needs cuDNN 9 or newer; ${CUDNN_INCLUDE_DIR} has ${_llmc_cudnn_version}")
  endif()
  file(STRINGS "${CUDNN_FRONTEND_INCLUDE_DIR}/cudnn_frontend_version.h" _llmc_v
       REGEX "^#define CUDNN_FRONTEND_(MAJOR|MINOR|PATCH)_VERSION ")
  string(REGEX REPLACE ".*MAJOR_VERSION ([0-9]+).*MINOR_VERSION ([0-9]+).*PATCH_VERSION ([0-9]+).*" "\\1.\\2.\\3"
         _llmc_frontend_version "${_llmc_v}")
  # cudnn-frontend (1.2x+) also compiles in an NVRTC-based engine of its own: nvrtc.h and libnvrtc,
  # preferably from beside cuBLAS (NVIDIA's wheel has it: nvidia-cuda-nvrtc is a dependency of
  # nvidia-cublas; one directory for both keeps the rpath free of conflicts), else the toolkit
  find_path(NVRTC_INCLUDE_DIR nvrtc.h HINTS ${_llmc_cublas_inc} PATHS ${CUDAToolkit_INCLUDE_DIRS}
            DOC "Directory holding nvrtc.h (LLMC_CUDNN)")
  find_library(NVRTC_LIBRARY NAMES nvrtc libnvrtc.so.13 NAMES_PER_DIR HINTS ${_llmc_cublas_libdir}
               PATHS ${CUDAToolkit_LIBRARY_DIR} DOC "libnvrtc.so or libnvrtc.so.13 (LLMC_CUDNN)")
  if(NOT NVRTC_INCLUDE_DIR OR NOT NVRTC_LIBRARY)
    message(FATAL_ERROR "LLMC_CUDNN=ON but NVRTC, which cudnn-frontend needs, was not found (nvrtc.h: "
                        "'${NVRTC_INCLUDE_DIR}', libnvrtc: '${NVRTC_LIBRARY}'). It is part of the CUDA toolkit, "
                        "or pip install nvidia-cuda-nvrtc; or pass -DNVRTC_INCLUDE_DIR= -DNVRTC_LIBRARY=.")
  endif()
  get_filename_component(_llmc_cudnn_libdir "${CUDNN_LIBRARY}" DIRECTORY)
  get_filename_component(_llmc_nvrtc_libdir "${NVRTC_LIBRARY}" DIRECTORY)
  message(STATUS "llmc: LLMC_CUDNN=ON: cuDNN ${_llmc_cudnn_version} (${CUDNN_INCLUDE_DIR}, ${CUDNN_LIBRARY}), "
                 "cudnn-frontend ${_llmc_frontend_version} (${CUDNN_FRONTEND_INCLUDE_DIR}), NVRTC ${NVRTC_LIBRARY}")

  # csrc/cudnn_attention.cpp twice: programs exit on a cuDNN error, the Python module throws
  foreach(variant llmc_cudnn_attention llmc_cudnn_attention_throw)
    add_library(${variant} STATIC csrc/cudnn_attention.cpp)
    target_compile_options(${variant} PRIVATE -O3 -Wall -Wextra)
    target_include_directories(${variant} PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
    target_include_directories(${variant} SYSTEM PRIVATE "${CUDNN_INCLUDE_DIR}" "${CUDNN_FRONTEND_INCLUDE_DIR}"
                               "${NVRTC_INCLUDE_DIR}" ${CUDAToolkit_INCLUDE_DIRS})
    target_link_libraries(${variant} PUBLIC "${CUDNN_LIBRARY}" "${NVRTC_LIBRARY}")
  endforeach()
  target_compile_definitions(llmc_cudnn_attention_throw PRIVATE LLMC_CUDA_THROW)

  function(_llmc_cudnn_attach)
    foreach(target train_gpt2cu test_gpt2cu profile_gpt2cu dev_cuda_attention llmc_cuda_engine _llmc_cuda)
      if(NOT TARGET ${target})
        continue()
      endif()
      if(target STREQUAL "_llmc_cuda")  # gets the engine's definitions and cuDNN through llmc_cuda_engine
        set_property(TARGET ${target} APPEND PROPERTY INSTALL_RPATH "${_llmc_cudnn_libdir}" "${_llmc_nvrtc_libdir}")
      elseif(target STREQUAL "llmc_cuda_engine")  # static library: no rpath of its own
        target_compile_definitions(${target} PRIVATE LLMC_CUDNN)
        target_link_libraries(${target} PUBLIC llmc_cudnn_attention_throw)
        continue()
      else()
        target_compile_definitions(${target} PRIVATE LLMC_CUDNN)
        target_link_libraries(${target} PRIVATE llmc_cudnn_attention)
      endif()
      set_property(TARGET ${target} APPEND PROPERTY BUILD_RPATH "${_llmc_cudnn_libdir}" "${_llmc_nvrtc_libdir}")
    endforeach()
  endfunction()
  cmake_language(DEFER CALL _llmc_cudnn_attach)
endif()
# ==== END LLMC_CUDNN ============================================================================

# ---- programs --------------------------------------------------------------------------------
# sm_90 machine code for Hopper (H100/H200). No --use_fast_math: the fp32 build must match the
# PyTorch reference to 1e-4, and the bf16 build uses the same math functions so the two differ only
# in storage precision.
# sm_90a (arch-specific Hopper code) as well: the wgmma attention kernels (llmc/attention_hopper*.cuh)
# exist only there; the driver picks it on H100/H200 and the sm_90 code runs the mma.sync kernels.
set(LLMC_CUDA_FLAGS -O3 --generate-code=arch=compute_90,code=sm_90 --generate-code=arch=compute_90a,code=sm_90a -lineinfo
    -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter)

function(llmc_add_cuda_program name source)
  add_executable(${name} ${source})
  set_target_properties(${name} PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                        CUDA_ARCHITECTURES OFF)
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${LLMC_CUDA_FLAGS}>)
  target_compile_definitions(${name} PRIVATE ${ARGN})
  target_link_libraries(${name} PRIVATE llmc_core llmc_cublas CUDA::cudart)
  if(_llmc_cublas_rpath)
    set_target_properties(${name} PROPERTIES BUILD_RPATH "${_llmc_cublas_rpath}")
  endif()
endfunction()

llmc_add_cuda_program(train_gpt2cu csrc/train_gpt2cu.cu)
llmc_add_cuda_program(train_gpt2cu_fp32 csrc/train_gpt2cu.cu LLMC_FP32)
llmc_add_cuda_program(test_gpt2cu csrc/test_gpt2cu.cu)
llmc_add_cuda_program(test_gpt2cu_fp32 csrc/test_gpt2cu.cu LLMC_FP32)

# ---- Python module llmc._llmc_cuda: the GPU engine behind llmc.cuda.CUDAModel ----------------
# The engine (csrc/bind_cuda.cu, built with LLMC_CUDA_THROW so CUDA errors throw instead of exiting)
# is a static library compiled by nvcc; the pybind11 side (csrc/bind_cuda.cpp) needs no CUDA
# headers. cudart is linked statically, so importing the module needs only the driver at run time
# (and libcublas from the toolkit or the pip wheel, found through the rpath).
if(LLMC_BUILD_PYTHON)
  add_library(llmc_cuda_engine STATIC csrc/bind_cuda.cu)
  set_target_properties(llmc_cuda_engine PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                        CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON)
  target_compile_options(llmc_cuda_engine PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${LLMC_CUDA_FLAGS}>)
  target_link_libraries(llmc_cuda_engine PUBLIC llmc_core llmc_cublas CUDA::cudart_static)
  pybind11_add_module(_llmc_cuda csrc/bind_cuda.cpp)
  target_compile_options(_llmc_cuda PRIVATE -O3)
  target_link_libraries(_llmc_cuda PRIVATE llmc_cuda_engine)
  # The module must use the shared libstdc++ that cuBLAS and cuDNN load: with some toolchains (the
  # H200 machine's g++ 13) a static copy got linked in as well, and two copies in one process crash
  # at the first std::ostream use that mixes them (cudnn-frontend's, inside a SIGSEGV). Naming the
  # shared library by its path, first, leaves nothing for a static copy to provide.
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libstdc++.so.6
                  OUTPUT_VARIABLE _llmc_libstdcxx OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(IS_ABSOLUTE "${_llmc_libstdcxx}" AND EXISTS "${_llmc_libstdcxx}")
    target_link_options(_llmc_cuda PRIVATE "SHELL:-Wl,--push-state,--no-as-needed ${_llmc_libstdcxx} -Wl,--pop-state")
  endif()
  if(_llmc_cublas_rpath)
    set_target_properties(_llmc_cuda PROPERTIES BUILD_RPATH "${_llmc_cublas_rpath}"
                          INSTALL_RPATH "${_llmc_cublas_rpath}")
  endif()
  install(TARGETS _llmc_cuda LIBRARY DESTINATION llmc)
  if(NOT SKBUILD)
    set_target_properties(_llmc_cuda PROPERTIES
                          LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/python/llmc)
  endif()
endif()

# ---- dev/cuda: one check-and-benchmark program per kernel ------------------------------------
# Built with everything else so that CI (no GPU) compiles every one of them; `cmake --build build
# --target dev_cuda` builds just these. Each program includes the production kernels from llmc/.
# A pip build skips them: it installs the trainers only.
if(SKBUILD)
  return()
endif()
file(GLOB _llmc_dev_cuda_sources CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/dev/cuda/*.cu")
# ==== BEGIN LLMC_NCCL: dev/cuda/nccl_all_reduce.cu needs NCCL =====================================
# Looked up in this order: NCCL_INCLUDE_DIR / NCCL_LIBRARY if given, the system paths and the CUDA
# toolkit, then NVIDIA's wheel (pip install nvidia-nccl-cu13: site-packages/nvidia/nccl/{include,lib},
# whose lib holds only libnccl.so.2). Found: the loop below builds dev_cuda_nccl_all_reduce and a
# deferred call (run at the end of the top-level CMakeLists.txt, once the target exists) adds NCCL's
# header and library to it. Not found: the program is left out of the loop, with a message.
# Everything NCCL-related of the build is in this block; the engine itself does not use NCCL.
if(NOT Python_EXECUTABLE)
  find_package(Python 3 QUIET COMPONENTS Interpreter)
endif()
set(_llmc_nccl_inc_paths ${CUDAToolkit_INCLUDE_DIRS})
set(_llmc_nccl_lib_paths ${CUDAToolkit_LIBRARY_DIR})
if(Python_EXECUTABLE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import nvidia, os; print(';'.join(os.path.join(p, 'nccl') for p in nvidia.__path__))"
    OUTPUT_VARIABLE _llmc_nccl_wheels OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  foreach(root IN LISTS _llmc_nccl_wheels)
    list(APPEND _llmc_nccl_inc_paths "${root}/include")
    list(APPEND _llmc_nccl_lib_paths "${root}/lib")
  endforeach()
endif()
find_path(NCCL_INCLUDE_DIR nccl.h PATHS ${_llmc_nccl_inc_paths} DOC "Directory holding nccl.h (dev/cuda)")
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 PATHS ${_llmc_nccl_lib_paths}
             DOC "libnccl.so or libnccl.so.2 (dev/cuda)")
if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h" AND NCCL_LIBRARY AND EXISTS "${NCCL_LIBRARY}")
  message(STATUS "llmc: NCCL for dev_cuda_nccl_all_reduce: ${NCCL_INCLUDE_DIR}, ${NCCL_LIBRARY}")
  function(_llmc_nccl_attach)
    if(NOT TARGET dev_cuda_nccl_all_reduce)
      return()
    endif()
    get_filename_component(libdir "${NCCL_LIBRARY}" DIRECTORY)
    target_include_directories(dev_cuda_nccl_all_reduce SYSTEM PRIVATE "${NCCL_INCLUDE_DIR}")
    target_link_libraries(dev_cuda_nccl_all_reduce PRIVATE "${NCCL_LIBRARY}")
    set_property(TARGET dev_cuda_nccl_all_reduce APPEND PROPERTY BUILD_RPATH "${libdir}")
  endfunction()
  cmake_language(DEFER CALL _llmc_nccl_attach)
else()
  list(REMOVE_ITEM _llmc_dev_cuda_sources "${CMAKE_CURRENT_SOURCE_DIR}/dev/cuda/nccl_all_reduce.cu")
  message(STATUS "llmc: NCCL not found (nccl.h: '${NCCL_INCLUDE_DIR}', libnccl: '${NCCL_LIBRARY}'); "
                 "dev_cuda_nccl_all_reduce is not built (pip install nvidia-nccl-cu13, or pass "
                 "-DNCCL_INCLUDE_DIR=<dir with nccl.h> -DNCCL_LIBRARY=<path of libnccl.so>)")
endif()
# ==== END LLMC_NCCL ===============================================================================
add_custom_target(dev_cuda)
foreach(source IN LISTS _llmc_dev_cuda_sources)
  get_filename_component(kernel "${source}" NAME_WE)
  llmc_add_cuda_program(dev_cuda_${kernel} "${source}")
  set_target_properties(dev_cuda_${kernel} PROPERTIES OUTPUT_NAME ${kernel}
                        RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/dev_cuda")
  add_dependencies(dev_cuda dev_cuda_${kernel})
endforeach()

# ---- profile_gpt2cu: one training step for ncu / nsys (dev/bench/profile_step.py) -----------------
llmc_add_cuda_program(profile_gpt2cu csrc/profile_gpt2cu.cu)
