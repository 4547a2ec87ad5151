# Injected by the Makefile (-DCMAKE_PROJECT_INCLUDE=...) when building interface packages against
# the ROS 2 wheels from PyPI; never used on a real ROS 2 install.
#
# The wheels' exported CMake targets carry include directories of the machine that built them
# (/opt/python/cp311-cp311/...), which do not exist here, and CMake's generate step fails on them.
# At the end of configuring the package, keep only the include directories that exist.
function(_bronchopt_prune_missing_includes)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(_dirs)
      set(_kept "")
      foreach(_d IN LISTS _dirs)
        if(EXISTS "${_d}" OR _d MATCHES "^\\$<")
          list(APPEND _kept "${_d}")
        endif()
      endforeach()
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _bronchopt_prune_missing_includes)
