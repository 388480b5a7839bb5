"""One-off comparison of ANN libraries for the SDK (hnswlib, faiss-cpu, usearch; IP and MIPS-to-L2).

``python -m simulations.compare_ann``: 100,000 items, d = 64 (+ bias), one thread, 200 queries
``randn * spectrum * 2``; 30 candidates per query re-scored exactly; recall@10 against exact.
The numbers in the README's "App SDK" section came from this script.
"""
# ruff: noqa
import time, numpy as np, os
rng=np.random.default_rng(0)
n,d=100_000,64
spec=np.exp(-np.arange(d)/12.0).astype(np.float32)
Q=(rng.standard_normal((n,d)).astype(np.float32)*spec)
b=(rng.standard_normal(n)*0.3).astype(np.float32)
X=np.hstack([Q,b[:,None]]).astype(np.float32)
P=(rng.standard_normal((200,d)).astype(np.float32)*spec*2)
Y=np.hstack([P,np.ones((200,1),np.float32)])
exact=[np.argpartition(-(X@y),10)[:10] for y in Y]
def rec(got): return np.mean([len(set(g[:10])&set(e))/10 for g,e in zip(got,exact)])
# MIPS->L2 augmentation
norms=np.linalg.norm(X,axis=1); M=norms.max()
XL=np.hstack([X,np.sqrt(np.maximum(M*M-norms**2,0))[:,None]]).astype(np.float32)
YL=np.hstack([Y,np.zeros((200,1),np.float32)])
def timeq(f,Ys):
    ts=[];out=[]
    for y in Ys:
        t=time.perf_counter(); r=f(y); ts.append(time.perf_counter()-t); out.append(r)
    return np.median(ts)*1e6, np.percentile(ts,99)*1e6, out
t=time.perf_counter(); [np.argpartition(-(X@y),10)[:10] for y in Y]; print("exact us", (time.perf_counter()-t)/200*1e6)
import hnswlib
for space,data,qs in [("ip",X,Y),("l2",XL,YL)]:
    idx=hnswlib.Index(space=space,dim=data.shape[1]); idx.set_num_threads(1)
    t=time.perf_counter(); idx.init_index(max_elements=n,M=16,ef_construction=100); idx.add_items(data,num_threads=1); bt=time.perf_counter()-t
    for ef in (50,100):
        idx.set_ef(ef)
        p50,p99,out=timeq(lambda y: idx.knn_query(y[None],k=30,num_threads=1)[0][0],qs)
        # rerank exact
        out2=[c[np.argsort(-(X[c.astype(np.int64)]@y[:d+1]))] for c,y in zip(out,Y)]
        print("hnswlib",space,"build",round(bt,1),"ef",ef,"p50",round(p50),"p99",round(p99),"recall",rec([o.astype(int) for o in out2]))
import faiss
faiss.omp_set_num_threads(1)
for name,data,qs,metric in [("ip",X,Y,faiss.METRIC_INNER_PRODUCT),("l2",XL,YL,faiss.METRIC_L2)]:
    idx=faiss.IndexHNSWFlat(data.shape[1],16,metric); idx.hnsw.efConstruction=100
    t=time.perf_counter(); idx.add(data); bt=time.perf_counter()-t
    for ef in (50,100):
        idx.hnsw.efSearch=ef
        p50,p99,out=timeq(lambda y: idx.search(y[None],30)[1][0],qs)
        out2=[c[np.argsort(-(X[c]@y[:d+1]))] for c,y in zip(out,Y)]
        print("faiss",name,"build",round(bt,1),"ef",ef,"p50",round(p50),"p99",round(p99),"recall",rec(out2))
from usearch.index import Index
for name,data,qs,metric in [("ip",X,Y,"ip"),("l2",XL,YL,"l2sq")]:
    idx=Index(ndim=data.shape[1],metric=metric,dtype="f32",connectivity=16,expansion_add=100,expansion_search=64)
    t=time.perf_counter(); idx.add(np.arange(n),data,threads=1); bt=time.perf_counter()-t
    for ef in (64,128):
        idx.expansion_search=ef
        p50,p99,out=timeq(lambda y: idx.search(y,30,threads=1).keys.astype(np.int64),qs)
        out2=[c[np.argsort(-(X[c]@y[:d+1]))] for c,y in zip(out,Y)]
        print("usearch",name,"build",round(bt,1),"ef",ef,"p50",round(p50),"p99",round(p99),"recall",rec(out2))
