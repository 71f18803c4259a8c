"""OpenSSL functions the Python bindings leave out, found in the cryptography wheel itself.

Why: pyOpenSSL and cryptography's cffi module bind a subset of OpenSSL. tlsgate wants three
functions outside it:

- ``SSL_CTX_set_cert_verify_callback`` replaces OpenSSL's chain check for a context. tlsgate's
  TLS layer accepts any client certificate (policies judge trust with ``Verify()``, whose
  results are remembered per certificate and trust state), yet OpenSSL would still build a
  chain and check the leaf's signature against the intermediate on every handshake: about a
  tenth of a full handshake's CPU, for a verdict that is thrown away.
- ``SSL_CTX_set_num_tickets``: how many TLS 1.3 session tickets follow a handshake.
- ``SSL_CTX_ctrl``, for ``SSL_CTX_sess_set_cache_size`` (a macro): the session cache's size.

How: the wheel links OpenSSL statically into ``_rust.abi3.so`` and exports none of it, but it
keeps the ELF symbol table (``.symtab``), local symbols included. :func:`load` reads that
table (little-endian ELF64) and takes the address the library was loaded at from a symbol the
dynamic linker does export (``PyInit__rust``), with the program headers the loader keeps
(``dl_iterate_phdr``). The build id in the file must be the one in memory (the file on disk
could have been replaced by an upgrade since it was loaded): that proves the table's
addresses. That exported symbol and an address cffi itself reports (its entry for
``SSL_CTX_set_verify``) must also be where the table says. Memory is read only inside the
library's loaded segments, after its load address was confirmed. Only then are the
functions used, typed through cffi, which knows OpenSSL's types. Otherwise — a stripped
wheel, another platform or layout — :func:`load` returns ``None`` and tlsgate works as
before: OpenSSL's chain check runs (and is ignored), and the settings that need these
functions are refused when the configuration is loaded. A function the bindings do bind (a
future wheel) is taken from them.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB = 2, 1
_SHT_SYMTAB = 2
_STT_FUNC = 2
_PT_LOAD, _PT_NOTE = 1, 4
_PF_R = 4
_NT_GNU_BUILD_ID = 3
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")   # Elf64_Shdr
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")     # Elf64_Phdr
_SYMBOL = struct.Struct("<IBBHQQ")               # Elf64_Sym

_SSL_CTRL_SET_SESS_CACHE_SIZE = 42

# The loaded library's address is found through this exported symbol ...
_EXPORTED = "PyInit__rust"
# ... and checked against the address cffi gives for this bound function (cffi's direct-call
# wrapper, or the function itself, depending on how the module was generated).
_CHECKED = "SSL_CTX_set_verify"
_CHECKED_NAMES = (f"_cffi_d_{_CHECKED}", _CHECKED)

_SIGNATURES = {
    "SSL_CTX_set_cert_verify_callback":
        "void (*)(SSL_CTX *, int (*)(X509_STORE_CTX *, void *), void *)",
    "SSL_CTX_set_num_tickets": "int (*)(SSL_CTX *, size_t)",
    "SSL_CTX_ctrl": "long (*)(SSL_CTX *, int, long, void *)",
}


@dataclass(frozen=True)
class UnboundOpenSSL:
    """The functions, typed: each takes a pyOpenSSL ``Context``."""

    _set_cert_verify_callback: Any
    _set_num_tickets: Any
    _ctrl: Any
    _accept_chain: Any = None      # the C callback, made with the functions, kept alive here

    def skip_chain_check(self, context: Any) -> None:
        """Make ``context`` accept the client's chain without OpenSSL's check (the policies'
        ``Verify()`` judges it); the CertificateVerify signature is still checked."""
        self._set_cert_verify_callback(context._context, self._accept_chain, _ffi.NULL)

    def set_session_ticket_count(self, context: Any, count: int) -> None:
        if not self._set_num_tickets(context._context, count):
            raise ValueError(f"OpenSSL refused {count} session tickets")

    def set_session_cache_size(self, context: Any, size: int) -> None:
        self._ctrl(context._context, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, _ffi.NULL)


def _accept_chain(store_ctx, _arg) -> int:  # C signature: int (*)(X509_STORE_CTX *, void *)
    # Accepted, but never "verified": SSL_get_verify_result (and the session's copy of it)
    # says the application decides, not X509_V_OK, so nothing can mistake it for a check.
    _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_ERR_APPLICATION_VERIFICATION)
    return 1


@functools.cache
def load() -> UnboundOpenSSL | None:
    """The functions from the wheel in use, or ``None`` when they cannot be found safely."""
    try:
        return _load()
    except Exception:   # noqa: BLE001 - whatever breaks, the fallback is to do without
        return None


def _load() -> UnboundOpenSSL | None:
    from cryptography.hazmat.bindings import _rust
    cffi_lib = _rust._openssl.lib
    functions = {name: getattr(cffi_lib, name) for name in _SIGNATURES if hasattr(cffi_lib, name)}
    if len(functions) < len(_SIGNATURES):
        addresses = _addresses_in_memory(_rust.__file__, cffi_lib)
        if addresses is None:
            return None
        for name, signature in _SIGNATURES.items():
            functions.setdefault(name, _ffi.cast(signature, addresses[name]))
    callback = _ffi.callback("int (*)(X509_STORE_CTX *, void *)", _accept_chain)
    return UnboundOpenSSL(functions["SSL_CTX_set_cert_verify_callback"],
                          functions["SSL_CTX_set_num_tickets"], functions["SSL_CTX_ctrl"],
                          callback)


def _addresses_in_memory(path: str, cffi_lib: Any) -> dict[str, int] | None:
    """Where the functions of ``_SIGNATURES`` are in the loaded library at ``path``, from the
    file's symbol table, or None unless the file provably is the library in memory.

    The proof is the build id (a hash of the build): the same id in the file and in memory
    means the same binary, so the table's addresses are right. The two symbols checked
    besides only confirm the load address."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as image:
        symbols = function_symbols(image, {_EXPORTED, *_CHECKED_NAMES, *_SIGNATURES})
        file_build_id = build_id(program_headers(image),
                                 lambda offset, size: image[offset:offset + size], loaded=False)
    # Already loaded by the import: RTLD_NOLOAD never maps a second copy.
    library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    exported = ctypes.cast(getattr(library, _EXPORTED), ctypes.c_void_p).value
    loaded = _loaded_object(exported)
    if loaded is None or _EXPORTED not in symbols:
        return None
    bias, headers = loaded
    if bias + symbols[_EXPORTED] != exported:
        return None     # checked before any read of memory

    def read_memory(address: int, size: int) -> bytes:
        return ctypes.string_at(bias + address, size)

    memory_build_id = build_id(headers, read_memory, loaded=True)
    if file_build_id is None or len(file_build_id) < 8 or file_build_id != memory_build_id:
        return None     # the file on disk is not the build in memory
    checked = int(_ffi.cast("uintptr_t", _ffi.addressof(cffi_lib, _CHECKED)))
    if not any(bias + symbols[name] == checked for name in _CHECKED_NAMES if name in symbols):
        return None
    if not all(name in symbols for name in _SIGNATURES):
        return None
    return {name: bias + symbols[name] for name in _SIGNATURES}


class _ProgramHeader(ctypes.Structure):    # Elf64_Phdr
    _fields_ = [("p_type", ctypes.c_uint32), ("p_flags", ctypes.c_uint32),
                ("p_offset", ctypes.c_uint64), ("p_vaddr", ctypes.c_uint64),
                ("p_paddr", ctypes.c_uint64), ("p_filesz", ctypes.c_uint64),
                ("p_memsz", ctypes.c_uint64), ("p_align", ctypes.c_uint64)]


class _LoadedObjectInfo(ctypes.Structure):    # the start of struct dl_phdr_info
    _fields_ = [("dlpi_addr", ctypes.c_uint64), ("dlpi_name", ctypes.c_char_p),
                ("dlpi_phdr", ctypes.POINTER(_ProgramHeader)), ("dlpi_phnum", ctypes.c_uint16)]


_VISIT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_LoadedObjectInfo), ctypes.c_size_t,
                          ctypes.c_void_p)


def _loaded_object(address: int) -> tuple[int, list[tuple]] | None:
    """The load bias and program headers of the loaded object one of whose PT_LOAD segments
    holds ``address``, as the dynamic loader keeps them (``dl_iterate_phdr``)."""
    found: list[tuple[int, list[tuple]]] = []

    def visit(info, _size, _data) -> int:
        bias = info.contents.dlpi_addr
        headers = [(h.p_type, h.p_flags, h.p_offset, h.p_vaddr, h.p_filesz, h.p_memsz,
                    h.p_align) for h in info.contents.dlpi_phdr[:info.contents.dlpi_phnum]]
        if any(kind == _PT_LOAD and bias + start <= address < bias + start + memory_size
               for kind, _, _, start, _, memory_size, _ in headers):
            found.append((bias, headers))
            return 1
        return 0

    # PyDLL keeps the GIL: the callback cannot then wait for it while another thread, holding
    # the GIL, waits for the loader's lock in dlopen.
    ctypes.PyDLL(None).dl_iterate_phdr(_VISIT(visit), None)
    return found[0] if found else None


def _check_header(header: bytes) -> None:
    if header[:4] != _ELF_MAGIC or header[4] != _ELFCLASS64 or header[5] != _ELFDATA2LSB:
        raise ValueError("not a little-endian ELF64 file")


def _sections(image: bytes | mmap.mmap) -> list[tuple]:
    """The section headers (Elf64_Shdr tuples) of a little-endian ELF64 image."""
    _check_header(image[:6])
    section_offset, = struct.unpack_from("<Q", image, 0x28)
    section_size, section_count = struct.unpack_from("<HH", image, 0x3A)
    if section_size != _SECTION_HEADER.size:
        raise ValueError("unexpected section header size")
    return [_SECTION_HEADER.unpack_from(image, section_offset + i * section_size)
            for i in range(section_count)]


def program_headers(image: bytes | mmap.mmap) -> list[tuple]:
    """The program headers of an ELF64 file: (type, flags, offset, address, file size,
    memory size, alignment) each."""
    _check_header(image[:6])
    table_offset, = struct.unpack_from("<Q", image, 0x20)
    entry_size, entry_count = struct.unpack_from("<HH", image, 0x36)
    if entry_size != _PROGRAM_HEADER.size:
        raise ValueError("unexpected program header size")
    headers = []
    for i in range(entry_count):
        kind, flags, offset, address, _, file_size, memory_size, align = \
            _PROGRAM_HEADER.unpack_from(image, table_offset + i * entry_size)
        headers.append((kind, flags, offset, address, file_size, memory_size, align))
    return headers


def build_id(headers: list[tuple], read: Callable[[int, int], bytes], *,
             loaded: bool) -> bytes | None:
    """The GNU build id among the notes of ``headers``, read through ``read(offset, size)``
    from the file (``loaded=False``: at file offsets) or from memory relative to the load
    bias (``loaded=True``: at addresses, and only notes inside a readable PT_LOAD's
    file-backed part, which the loader surely mapped); None without one."""
    mapped = [(start, start + file_size) for kind, flags, _, start, file_size, _, _ in headers
              if kind == _PT_LOAD and flags & _PF_R]
    for kind, _, offset, address, size, _, align in headers:
        if kind != _PT_NOTE:
            continue
        if loaded and not any(start <= address and address + size <= end
                              for start, end in mapped):
            continue
        found = _gnu_build_id(read(address if loaded else offset, size), 8 if align == 8 else 4)
        if found is not None:
            return found
    return None


def _gnu_build_id(notes: bytes, align: int) -> bytes | None:
    def padded(size: int) -> int:
        return (size + align - 1) // align * align

    at = 0
    while at + 12 <= len(notes):
        name_size, description_size, kind = struct.unpack_from("<III", notes, at)
        description_at = at + 12 + padded(name_size)
        if kind == _NT_GNU_BUILD_ID and notes[at + 12:at + 12 + name_size] == b"GNU\0":
            return bytes(notes[description_at:description_at + description_size])
        at = description_at + padded(description_size)
    return None


def function_symbols(image: bytes | mmap.mmap, wanted: set[str]) -> dict[str, int]:
    """Values of the function symbols named in ``wanted`` in an ELF64 little-endian image's
    ``.symtab``; a name defined twice with different values is left out (ambiguous)."""
    sections = _sections(image)
    found: dict[str, int] = {}
    ambiguous: set[str] = set()
    for _, kind, _, _, offset, size, link, _, _, entry_size in sections:
        if kind != _SHT_SYMTAB or entry_size != _SYMBOL.size:
            continue
        names = _name_offsets(image, sections[link], wanted)
        for name_at, info, _, _, value, _ in _SYMBOL.iter_unpack(image[offset:offset + size]):
            name = names.get(name_at)
            if name is None or info & 0xF != _STT_FUNC or not value:
                continue
            if found.setdefault(name, value) != value:
                ambiguous.add(name)
    return {name: value for name, value in found.items() if name not in ambiguous}


def _name_offsets(image: bytes | mmap.mmap, strings_header: tuple,
                  wanted: set[str]) -> dict[int, str]:
    """Offsets in a string table at which each wanted name (NUL-ended) can be read. A name may
    also be the tail of a longer string (linkers share tails), so every occurrence counts."""
    start, size = strings_header[4], strings_header[5]
    table = image[start:start + size]
    offsets: dict[int, str] = {}
    for name in wanted:
        needle = name.encode() + b"\0"
        at = table.find(needle)
        while at >= 0:
            offsets[at] = name
            at = table.find(needle, at + 1)
    return offsets
