// The Python module init of an extension module whose content is its static operator registrations.
// TORCH_EXTENSION_NAME is the module's last name component (torch.utils.cpp_extension defines it).
#pragma once

#include <Python.h>

#define PETAL_CONCAT_(a, b) a##b
#define PETAL_CONCAT(a, b) PETAL_CONCAT_(a, b)
#define PETAL_STRING_(a) #a
#define PETAL_STRING(a) PETAL_STRING_(a)

#define PETAL_PYTHON_MODULE()                                                                   \
  extern "C" PyMODINIT_FUNC PETAL_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {                 \
    static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, PETAL_STRING(TORCH_EXTENSION_NAME), \
                                            nullptr, -1, nullptr};                              \
    return PyModule_Create(&module_def);                                                        \
  }
