# Install test, run by CTest as `cmake -D... -P install_consumer.cmake`:
# install tlcpu into a scratch prefix, then build and run tests/consumer against that prefix
# alone. This catches what the in-tree build cannot: a header missing from the install
# rules, or an installed tlcpuConfig.cmake that does not find the dependencies.
#
# Inputs: TLCPU_BUILD_DIR (the build tree to install from), CONSUMER_SOURCE_DIR,
#         WORK_DIR (scratch, wiped first), GENERATOR, CXX_COMPILER, CONFIG.

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${what} failed (${rc})")
  endif()
endfunction()

if(NOT CONFIG)
  set(CONFIG Release)
endif()
set(prefix "${WORK_DIR}/prefix")
set(build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")  # stale installs or caches would hide a broken install

run("cmake --install" ${CMAKE_COMMAND} --install "${TLCPU_BUILD_DIR}" --prefix "${prefix}" --config ${CONFIG})
# -O0: the installed package is under test, not the optimiser, and at -O3 compiling the
# consumer's ResNet-50 was most of this test's time.
string(TOUPPER "${CONFIG}" config_upper)
run("configuring the consumer" ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${build}"
    -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=${CONFIG}
    -DCMAKE_CXX_FLAGS_${config_upper}=-O0 -DCMAKE_PREFIX_PATH=${prefix})

# It must be the fresh install that was found, not some tlcpu elsewhere on the system.
file(STRINGS "${build}/CMakeCache.txt" found REGEX "^tlcpu_DIR:")
string(FIND "${found}" "${prefix}/" at)
if(NOT at GREATER -1)
  message(FATAL_ERROR "install_consumer: consumer used ${found}, not the install in ${prefix}")
endif()

run("building the consumer" ${CMAKE_COMMAND} --build "${build}" --config ${CONFIG})
find_program(consumer consumer PATHS "${build}" "${build}/${CONFIG}" NO_DEFAULT_PATH REQUIRED)
run("running the consumer" "${consumer}")
