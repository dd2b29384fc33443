# `cmake --install`: the public headers (PREFIX/include/sovtrain/), libsovtrain.so.MAJOR and libsovtrain.a, the
# `sovtrain` command, pkg-config's sovtrain.pc and the CMake package (find_package(sovtrain): sovtrain::sovtrain).
include(CMakePackageConfigHelpers)

foreach(m base collectives checkpoint runtime launcher)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${m}/include/sovtrain DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
          FILES_MATCHING PATTERN "*.h")
endforeach()
install(TARGETS sovtrain EXPORT sovtrainTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Development)
install(TARGETS sovtrain_static ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS sovtrain_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# pkg-config: `pkg-config --cflags --libs sovtrain` for the shared library; --static adds what libsovtrain.a needs.
# The public headers need no other library's, so nothing goes in Requires.private (whose cflags pkg-config adds).
set(SOV_PC_LIBS_PRIVATE " -lzstd -lxxhash -ljansson -lcrypto -lopenblas -libverbs -lz")
foreach(lib ${MPI_C_LIBRARIES})
  string(APPEND SOV_PC_LIBS_PRIVATE " ${lib}")
endforeach()
if(SOVTRAIN_HAVE_CUDA)
  string(APPEND SOV_PC_LIBS_PRIVATE " ${CUDA_cudart_LIBRARY} ${CUDA_cublas_LIBRARY} ${NCCL_LIBRARY}")
endif()
string(APPEND SOV_PC_LIBS_PRIVATE " -lpthread -lm -lrt")
file(RELATIVE_PATH SOV_PC_UP /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REGEX REPLACE "/$" "" SOV_PC_UP "${SOV_PC_UP}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/sovtrain.pc.in ${PROJECT_BINARY_DIR}/sovtrain.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/sovtrain.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

set(SOV_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/sovtrain)
install(EXPORT sovtrainTargets NAMESPACE sovtrain:: DESTINATION ${SOV_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/sovtrainConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/sovtrainConfig.cmake INSTALL_DESTINATION ${SOV_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/sovtrainConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/sovtrainConfig.cmake ${PROJECT_BINARY_DIR}/sovtrainConfigVersion.cmake
        DESTINATION ${SOV_CMAKE_DIR})
