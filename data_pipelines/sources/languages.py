"""Programming language from a file name (extension or well-known file name), as GitHub Linguist names them."""

from __future__ import annotations

import os

EXTENSIONS: dict[str, str] = {
    ".py": "Python", ".pyi": "Python", ".pyx": "Cython", ".pxd": "Cython",
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++",
    ".cu": "CUDA", ".cuh": "CUDA", ".m": "Objective-C", ".mm": "Objective-C++",
    ".java": "Java", ".kt": "Kotlin", ".kts": "Kotlin", ".scala": "Scala", ".groovy": "Groovy", ".clj": "Clojure",
    ".cs": "C#", ".fs": "F#", ".vb": "Visual Basic .NET",
    ".go": "Go", ".rs": "Rust", ".swift": "Swift", ".zig": "Zig", ".nim": "Nim", ".d": "D",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".vue": "Vue", ".svelte": "Svelte",
    ".rb": "Ruby", ".php": "PHP", ".pl": "Perl", ".pm": "Perl", ".lua": "Lua", ".r": "R", ".jl": "Julia",
    ".hs": "Haskell", ".ml": "OCaml", ".mli": "OCaml", ".ex": "Elixir", ".exs": "Elixir", ".erl": "Erlang",
    ".dart": "Dart", ".f90": "Fortran", ".f": "Fortran", ".for": "Fortran", ".pas": "Pascal", ".ada": "Ada",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell", ".fish": "fish", ".ps1": "PowerShell", ".bat": "Batchfile",
    ".sql": "SQL", ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS", ".less": "Less",
    ".md": "Markdown", ".rst": "reStructuredText", ".tex": "TeX", ".txt": "Text",
    ".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".xml": "XML", ".ini": "INI", ".cfg": "INI",
    ".proto": "Protocol Buffer", ".cmake": "CMake", ".mk": "Makefile", ".asm": "Assembly", ".s": "Assembly",
    ".el": "Emacs Lisp", ".lisp": "Common Lisp", ".scm": "Scheme", ".rkt": "Racket", ".v": "Verilog",
    ".sv": "SystemVerilog", ".vhd": "VHDL", ".tf": "HCL", ".nix": "Nix", ".ipynb": "Jupyter Notebook",
}
FILENAMES: dict[str, str] = {
    "Makefile": "Makefile", "GNUmakefile": "Makefile", "makefile": "Makefile", "Dockerfile": "Dockerfile",
    "CMakeLists.txt": "CMake", "Rakefile": "Ruby", "Gemfile": "Ruby", "BUILD": "Starlark", "WORKSPACE": "Starlark",
    "Jenkinsfile": "Groovy", "meson.build": "Meson",
}
# never text: skipped as binary without reading them
BINARY_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".pdf", ".zip", ".gz", ".bz2",
    ".xz", ".zst", ".tar", ".7z", ".rar", ".jar", ".war", ".class", ".pyc", ".pyo", ".so", ".dll", ".dylib",
    ".exe", ".o", ".a", ".lib", ".obj", ".bin", ".dat", ".db", ".sqlite", ".woff", ".woff2", ".ttf", ".otf",
    ".eot", ".mp3", ".mp4", ".wav", ".ogg", ".flac", ".avi", ".mov", ".mkv", ".npy", ".npz", ".pt", ".pth",
    ".ckpt", ".safetensors", ".parquet", ".arrow", ".pkl", ".pickle", ".h5", ".whl", ".egg",
})


def language_of(path: str) -> str | None:
    """Linguist-style language name, or ``None`` when the file is not recognised as source."""
    name = os.path.basename(path)
    if name in FILENAMES:
        return FILENAMES[name]
    return EXTENSIONS.get(os.path.splitext(name)[1].lower())
