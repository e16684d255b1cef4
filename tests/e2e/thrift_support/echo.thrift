// The service every Thrift end-to-end test talks: one call of each kind a proxy must get right.
namespace py metaproxy_echo

struct Item {
  1: string name,
  2: map<string, i64> counts,
  3: list<string> tags,
  4: optional Item child,
}

exception NotFound {
  1: string what,
}

service Echo {
  void ping(),
  Item echo(1: Item item),
  Item find(1: string name) throws (1: NotFound nf),
  oneway void fire(1: string note),
  string whoami(),
  // Declared so clients can call it; the tests' routes never match it.
  void missing(),
}

service Other {
  string whoami(),
}
