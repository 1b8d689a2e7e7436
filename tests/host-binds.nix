# Host paths that stand in for the store's tool environment on a machine
# without nixpkgs: the test fixture and bench/render.py bind these instead.
[
  {
    source = "/usr";
    target = "/usr";
  }
  {
    source = "/bin";
    target = "/bin";
  }
  {
    source = "/sbin";
    target = "/sbin";
  }
  {
    source = "/lib";
    target = "/lib";
  }
  {
    source = "/lib64";
    target = "/lib64";
    optional = true;
  }
  {
    source = "/etc/alternatives";
    target = "/etc/alternatives";
    optional = true;
  }
]
