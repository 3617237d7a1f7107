{
  "targets": [
    {
      "target_name": "ontop_native",
      "sources": ["native/ontop.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=9", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags": ["-Wall", "-Wextra", "-Werror"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    }
  ]
}
