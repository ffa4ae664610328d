# mfglab_add_plugin(<name> SOURCES <src>... [NUMERICS] [BLAS] [CORE_ONLY] [PCH_FROM <target>])
#
# Declares a plugin library built exactly as the engine expects: a MODULE library named
# mfglab_plugin_<name>.so, hidden visibility, exporting only mfglab_plugin_entry.
# Copy the files to `<prefix>/lib/mfglab/plugins` (or point MFGLAB_PLUGIN_PATH or
# `mfglab --plugin-dir` at the build folder) for the engine to find it.
#
# Every plugin gets the ABI core (mfglab::sdk). NUMERICS adds the numerics toolkit
# (mfglab::numerics: <mfglab/nn.h>, <mfglab/ode.h>, ...), BLAS adds it with <mfglab/blas.h>'s
# BLAS link (mfglab::blas), CORE_ONLY states that the plugin needs neither. Without any of
# the three (plugins written before the toolkit was split off) the sources, and the headers
# beside them, are scanned for what they include.
set(_MFGLAB_PLUGIN_MAP "${CMAKE_CURRENT_LIST_DIR}/plugin.map")

# Sets <out_numerics> and <out_blas> from the #include lines of the given sources and of the
# .h/.hpp files in their folders.
function(_mfglab_scan_includes out_numerics out_blas)
  # The ABI core's headers; any other <mfglab/...> header belongs to the numerics toolkit.
  set(core_headers sdk.h plugin.h manifest.h params.h evaluation.h capabilities_mfg.h capabilities_score.h)
  set(numerics OFF)
  set(blas OFF)
  set(files "")
  foreach(src IN LISTS ARGN)
    if(NOT IS_ABSOLUTE "${src}")
      set(src "${CMAKE_CURRENT_SOURCE_DIR}/${src}")
    endif()
    list(APPEND files "${src}")
    get_filename_component(dir "${src}" DIRECTORY)
    file(GLOB headers "${dir}/*.h" "${dir}/*.hpp")
    list(APPEND files ${headers})
  endforeach()
  list(REMOVE_DUPLICATES files)
  foreach(f IN LISTS files)
    if(NOT EXISTS "${f}")
      continue()
    endif()
    file(STRINGS "${f}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]mfglab/[A-Za-z0-9_]+\\.h")
    foreach(line IN LISTS lines)
      string(REGEX REPLACE ".*mfglab/([A-Za-z0-9_]+\\.h).*" "\\1" header "${line}")
      if(header STREQUAL "blas.h")
        set(blas ON)
      endif()
      if(NOT header IN_LIST core_headers)
        set(numerics ON)
      endif()
    endforeach()
  endforeach()
  set(${out_numerics} ${numerics} PARENT_SCOPE)
  set(${out_blas} ${blas} PARENT_SCOPE)
endfunction()

function(mfglab_add_plugin name)
  cmake_parse_arguments(ARG "NUMERICS;BLAS;CORE_ONLY" "PCH_FROM" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "mfglab_add_plugin(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  if(NOT ARG_NUMERICS AND NOT ARG_BLAS AND NOT ARG_CORE_ONLY)
    _mfglab_scan_includes(ARG_NUMERICS ARG_BLAS ${ARG_SOURCES})
  endif()
  if(ARG_BLAS)
    target_link_libraries(${name} PRIVATE mfglab::blas)
  elseif(ARG_NUMERICS)
    target_link_libraries(${name} PRIVATE mfglab::numerics)
  else()
    target_link_libraries(${name} PRIVATE mfglab::sdk)
  endif()
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    OUTPUT_NAME "mfglab_plugin_${name}"
    CXX_STANDARD 17
    CXX_STANDARD_REQUIRED ON
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    POSITION_INDEPENDENT_CODE ON)
  target_link_options(${name} PRIVATE "LINKER:--version-script=${_MFGLAB_PLUGIN_MAP}"
                                      "LINKER:--no-undefined")
  set_property(TARGET ${name} APPEND PROPERTY LINK_DEPENDS "${_MFGLAB_PLUGIN_MAP}")
  if(DEFINED MFGLAB_PLUGIN_OUTPUT_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${MFGLAB_PLUGIN_OUTPUT_DIR}")
  endif()
  if(ARG_PCH_FROM)
    target_precompile_headers(${name} REUSE_FROM ${ARG_PCH_FROM})
  endif()
endfunction()
