"""Sequential recommendation on the project's own GPT: each user's history is a sequence of item tokens.

    ratings file ─► prepare (time order, leave-one-out) ─► train (GPT over item ids, next-item loss)
                ─► eval (full ranking HR/NDCG vs popularity, item-kNN, ALS) ─► predict / POST /v1/recommendations

Modules: data.py (reading, splitting, the training loader), metrics.py (HR@K, NDCG@K),
baselines.py (popularity, item-kNN, ALS), model.py (the Task and scoring with the GPT),
api.py (the HTTP router). SASRec (Kang & McAuley 2018) is the model this follows.
"""
