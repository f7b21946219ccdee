"""The light node against a FISCO BCOS 3.x chain (gm mode, ``sm_crypto: 1``).

A second chain source beside the ledger protocol of this project: the same verified header
store, the same verify-everything stance, FISCO's own data layout. See docs/fisco-bcos.md.

| module | what |
| --- | --- |
| ``jsonrpc`` | JSON with size limits before parsing; JSON-RPC 2.0 requests, answers, batches |
| ``block`` | ``FiscoHeader``, ``SealerSet``: strict decoding, hash preimages, tx proofs |
| ``receipt`` | ``Receipt``: every field value FISCO can produce, one reading of its hash |
| ``merkle`` | FISCO's width-w Merkle tree and its proofs, verified with the leaf's position |
| ``verify`` | quorum of SM2 signatures, segments (parent links, sealer list), inclusion |
| ``anchor`` | the FISCO trust anchor (JSON) |
| ``sync`` | ``FiscoSync``: the sans-I/O sync machine |
| ``client`` | ``FiscoNodeSync``: the aiohttp adapter (batches, limits, bans, the header store) |
| ``cli`` | ``appliance node sync|status|tx --chain-kind fisco-bcos-3`` |

``import appliance.node.fisco`` imports nothing; import the module you need.
"""
