# mfglab_add_plugin(<name> SOURCES <src>... [PCH_FROM <target>])
#
# Declares a plugin library built exactly as the engine expects: a MODULE library named
# mfglab_plugin_<name>.so, hidden visibility, exporting only mfglab_plugin_entry.
# Copy the files to `<prefix>/lib/mfglab/plugins` (or point MFGLAB_PLUGIN_PATH or
# `mfglab --plugin-dir` at the build folder) for the engine to find it.
set(_MFGLAB_PLUGIN_MAP "${CMAKE_CURRENT_LIST_DIR}/plugin.map")

function(mfglab_add_plugin name)
  cmake_parse_arguments(ARG "" "PCH_FROM" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "mfglab_add_plugin(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE mfglab::sdk)
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
