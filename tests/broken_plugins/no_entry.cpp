// (a) A shared library that exports a function, but not mfglab_plugin_entry: the host
// must refuse it as "not an mfglab plugin".
extern "C" __attribute__((visibility("default"))) int not_a_plugin(void) { return 42; }
