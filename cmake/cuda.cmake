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

# ---- programs --------------------------------------------------------------------------------
# sm_90 machine code for Hopper (H100/H200). No --use_fast_math: the fp32 build must match the
# PyTorch reference to 1e-4, and the bf16 build uses the same math functions so the two differ only
# in storage precision.
set(LLMC_CUDA_FLAGS -O3 -gencode arch=compute_90,code=sm_90 -lineinfo
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
