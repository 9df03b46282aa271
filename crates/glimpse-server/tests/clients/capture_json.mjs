// Preloaded with `node --import`: the seed's Node example ends in `await response.json()` and
// prints nothing, so record the status and the parsed body on stdout. The script is not touched.
const original = Response.prototype.json;
Response.prototype.json = async function () {
  const data = await original.call(this);
  process.stdout.write(JSON.stringify({ status: this.status, body: data }));
  return data;
};
