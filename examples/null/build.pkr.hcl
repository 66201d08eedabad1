# A Packer template that needs no hypervisor: the null builder plus a shell-local provisioner that
# behaves like a small image build. `make demo` runs it through `git evidence run`.
#
#   packer build build.pkr.hcl                 # succeeds
#   packer build -var fail=true build.pkr.hcl  # fails in the provisioner, like a broken install

variable "fail" {
  type    = bool
  default = false
}

source "null" "demo" {
  communicator = "none"
}

build {
  sources = ["source.null.demo"]

  provisioner "shell-local" {
    inline = [
      "echo 'installing packages (simulated)'",
      "echo 'hardening: sshd PermitRootLogin no (simulated)'",
      # Facts for the proof: appended to the file git-evidence names in EVIDENCE_FACTS.
      "[ -n \"$EVIDENCE_FACTS\" ] && echo 'os=ubuntu-22.04' >> \"$EVIDENCE_FACTS\" || true",
      "${var.fail ? "echo 'apt-get: unable to fetch archives' >&2; exit 100" : "echo 'done'"}",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      example = "null"
    }
  }
}
