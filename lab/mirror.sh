# shellcheck shell=bash
# debian_mirror: the Debian archive this machine's own APT configuration uses (the first
# non-security "deb" source), so that no registry's name is written into the repository.
# HMLAB_DEBIAN_MIRROR overrides it.
debian_mirror() {
  if [ -n "${HMLAB_DEBIAN_MIRROR:-}" ]; then echo "${HMLAB_DEBIAN_MIRROR%/}"; return 0; fi
  local uri
  uri=$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' 2>/dev/null \
          | grep -v -- '-security' | grep -iv 'nodesource\|google' | head -1)
  [ -n "$uri" ] || { echo "no Debian source in this machine's APT configuration; set HMLAB_DEBIAN_MIRROR" >&2; return 1; }
  echo "${uri%/}"
}
