# Finds what tlcpu's headers need. Used by the build tree and by the installed
# tlcpuConfig.cmake, so a consumer's find_package(tlcpu) gets the same targets.
include(CMakeFindDependencyMacro)
# Inside find_package(tlcpu) a missing dependency must make that call report "not found";
# in our own build it must stop configuration at once, naming the package.
macro(tlcpu_find_dependency)
  if(CMAKE_FIND_PACKAGE_NAME)
    find_dependency(${ARGN})
  else()
    find_package(${ARGN} REQUIRED)
  endif()
endmacro()
tlcpu_find_dependency(Eigen3 3.3 NO_MODULE)
tlcpu_find_dependency(dnnl 2.6)
tlcpu_find_dependency(OpenMP)
tlcpu_find_dependency(nlohmann_json 3)
# Only the C API is used; skipping the C++ bindings (deprecated, and absent from MPICH builds
# without them) keeps any MPI-3 library good enough.
if(TLCPU_WITH_MPI)
  set(MPI_CXX_SKIP_MPICXX ON)
  tlcpu_find_dependency(MPI 3 COMPONENTS CXX)
endif()

# Debian's libstb-dev ships the implementations compiled into libstb.a, so no
# translation unit of ours has to define STB_IMAGE_IMPLEMENTATION.
if(NOT TARGET tlcpu::stb)
  find_path(TLCPU_STB_INCLUDE_DIR stb_image.h PATH_SUFFIXES stb)
  find_library(TLCPU_STB_LIBRARY NAMES stb)
  if(NOT TLCPU_STB_INCLUDE_DIR OR NOT TLCPU_STB_LIBRARY)
    message(FATAL_ERROR "tlcpu: stb not found (install Debian's libstb-dev)")
  endif()
  add_library(tlcpu::stb UNKNOWN IMPORTED)
  set_target_properties(tlcpu::stb PROPERTIES
    IMPORTED_LOCATION "${TLCPU_STB_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TLCPU_STB_INCLUDE_DIR}")
endif()
