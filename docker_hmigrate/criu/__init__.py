"""CRIU image files: read, inspect, change and write checkpoint image sets.

The library recode builds on (see docs/criu-images.md):

    s = ImageSet.load(dir)           # every file of a checkpoint directory
    s.inventory, s.pstree, s.core(tid), s.mm(pid), s.files, s.fdinfo(pid)
    s.memory(pid).read(addr, n) / .write(addr, data)
    s.save(new_dir)                  # byte-identical unless something was changed
    isa_specific_parts(s), check_supported(s)
"""

from docker_hmigrate.criu.image import Entry, ImageError, ImageFile, unknown_fields
from docker_hmigrate.criu.imageset import ImageSet
from docker_hmigrate.criu.isa import check_supported, isa_specific_parts, vma_kind
from docker_hmigrate.criu.memory import Memory, NotDumpedError
from docker_hmigrate.criu.schema import FdType, March, message_class, new

__all__ = [
    "Entry", "FdType", "ImageError", "ImageFile", "ImageSet", "March", "Memory",
    "NotDumpedError", "check_supported", "isa_specific_parts", "message_class", "new",
    "unknown_fields", "vma_kind",
]
